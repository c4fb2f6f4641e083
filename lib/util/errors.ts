/**
 * The errors every layer below HTTP throws, named for what went wrong rather than for a status. Only
 * lib/http/errors.ts turns them into statuses, in one table; lower layers never throw `HttpError`.
 *
 * Input that cannot be understood is a {@linkcode MalformedError} (a `SyntaxError`) or an
 * {@linkcode OutOfRangeError} (a `RangeError`): the client's mistake (400) when the input came from the
 * client. The built-in `SyntaxError`, `RangeError` and `TypeError` are left to the engine and to bugs (a stack
 * overflow, an invalid array length): they are answered 500.
 *
 * May import: nothing.
 *
 * @module
 */

/** Input that cannot be parsed: a malformed parameter, header, multipart body or DICOM object. */
export class MalformedError extends SyntaxError {}

/** A value outside what is allowed: an invalid UID, a frame number past the end, a bad setting. */
export class OutOfRangeError extends RangeError {}

/** What was asked for does not exist (an object that disappeared, an instance without pixel data). */
export class NotFoundError extends Error {
  override name = "NotFoundError";
}

/** None of the representations the client accepts can be produced (see lib/http/negotiation.ts). */
export class NotAcceptableError extends Error {
  override name = "NotAcceptableError";
}

/** The work asked for is larger than the configured limits allow (a frame or an instance to decode). */
export class TooLargeError extends Error {
  override name = "TooLargeError";
}

/** Data that is understood but cannot be processed: pixel data a codec cannot decode. */
export class UnprocessableError extends Error {
  override name = "UnprocessableError";
}

/** The server has too much work queued to take this request now (503: the client may retry). */
export class BusyError extends Error {
  override name = "BusyError";
}

/**
 * A stored object that is not readable DICOM: the server's data, not the client's request, is at fault.
 * `key` names the object.
 */
export class CorruptObjectError extends Error {
  override name = "CorruptObjectError";
  readonly key: string;
  constructor(key: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.key = key;
  }
}

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

/** The base of the errors below: its `name` is the class's name. */
export class DomainError extends Error {
  /** An error with `message`. */
  constructor(message?: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** What was asked for does not exist (an object that disappeared, an instance without pixel data). */
export class NotFoundError extends DomainError {}

/** None of the representations the client accepts can be produced (see lib/http/negotiation.ts). */
export class NotAcceptableError extends DomainError {}

/** The work asked for is larger than the configured limits allow (a frame or an instance to decode). */
export class TooLargeError extends DomainError {}

/** Data that is understood but cannot be processed: pixel data a codec cannot decode. */
export class UnprocessableError extends DomainError {}

/** The server has too much work queued to take this request now (503: the client may retry). */
export class BusyError extends DomainError {}

/**
 * A stored object that is not readable DICOM: the server's data, not the client's request, is at fault.
 * `key` names the object.
 */
export class CorruptObjectError extends DomainError {
  /** The object's key. */
  readonly key: string;
  /** An error about the object `key`. */
  constructor(key: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.key = key;
  }
}

import assert from "node:assert/strict";
import { HttpError, STATUS_OF, toHttpError } from "../../lib/http/errors.ts";
import { StoreError } from "../../lib/store/store.ts";
import {
  BusyError,
  CorruptObjectError,
  MalformedError,
  NotAcceptableError,
  NotFoundError,
  OutOfRangeError,
  TooLargeError,
  UnprocessableError,
} from "../../lib/util/errors.ts";

Deno.test("toHttpError() maps each layer's typed errors through one table, and everything else to 500", async (t) => {
  await t.step("typed errors get their status and keep their message and cause", () => {
    const cases: [Error, number][] = [
      [new MalformedError("Invalid multipart body"), 400],
      [new OutOfRangeError("Invalid UID"), 400],
      [new NotFoundError("Not found: x"), 404],
      [new NotAcceptableError("None of the media types"), 406],
      [new TooLargeError("Frame too large"), 413],
      [new UnprocessableError("Cannot decode"), 422],
      [new CorruptObjectError("a/b/c.dcm", "Stored object a/b/c.dcm is not readable DICOM"), 500],
      [new BusyError("The codec pool has 4096 tasks waiting"), 503],
      [new StoreError("unavailable", "S3 is down"), 503],
      [new StoreError("failed", "S3 said 500"), 502],
    ];
    for (const [error, status] of cases) {
      const mapped = toHttpError(error);
      assert.equal(mapped.status, status, error.name);
      assert.equal(mapped.message, error.message);
      assert.equal(mapped.cause, error);
    }
  });

  await t.step("programming and engine errors are 500s, never a client's 400", () => {
    let overflow: unknown;
    const recurse = (n: number): number => recurse(n + 1) + 1;
    try {
      recurse(0);
    } catch (error) {
      overflow = error;
    }
    assert.ok(overflow instanceof RangeError);
    let badJson: unknown;
    try {
      JSON.parse("{");
    } catch (error) {
      badJson = error;
    }
    for (
      const error of [
        overflow,
        badJson,
        new TypeError("x is undefined"),
        new RangeError("Invalid array length"),
      ]
    ) {
      const mapped = toHttpError(error);
      assert.equal(mapped.status, 500, String(error));
      assert.match(mapped.message, /^Internal error: /);
    }
  });

  await t.step("an HttpError passes through; an AbortError is 499", () => {
    const error = new HttpError(429, "Too many requests", { headers: { "retry-after": "1" } });
    assert.equal(toHttpError(error), error);
    assert.equal(toHttpError(new DOMException("aborted", "AbortError")).status, 499);
  });

  await t.step("the table lists each class once", () => {
    const classes = STATUS_OF.map(([type]) => type);
    assert.equal(new Set(classes).size, classes.length);
  });
});

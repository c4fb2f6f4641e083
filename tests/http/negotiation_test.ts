import assert from "node:assert/strict";
import { negotiateDicom, parseAccept, rankRanges } from "../../lib/http/negotiation.ts";
import { NotAcceptableError } from "../../lib/util/errors.ts";

const ELE = "1.2.840.10008.1.2.1";
const JPEG_BASELINE = "1.2.840.10008.1.2.4.50";
const MULTI = { single: false };
const SINGLE = { single: true };

function notAcceptable(accept: string, options = MULTI) {
  assert.throws(() => negotiateDicom(accept, options), (error: unknown) => {
    assert.ok(error instanceof NotAcceptableError, `expected NotAcceptableError, got ${error}`);
    assert.match(error.message, /multipart\/related; type="application\/dicom"/);
    return true;
  }, accept);
}

function malformed(accept: string) {
  assert.throws(() => parseAccept(accept), SyntaxError, accept);
  assert.throws(() => negotiateDicom(accept, MULTI), SyntaxError, accept);
}

Deno.test("parseAccept()", async (t) => {
  await t.step("treats an absent or blank header as */*", () => {
    for (const header of [null, undefined, "", "   "]) {
      assert.deepEqual(parseAccept(header), [{ type: "*", subtype: "*", params: {}, q: 1 }]);
    }
  });

  await t.step("parses several media ranges with q-values", () => {
    const ranges = parseAccept(
      'multipart/related; type="application/dicom"; q=0.9, application/dicom;q=0.5, */*;q=0.1',
    );
    assert.deepEqual(ranges, [
      { type: "multipart", subtype: "related", params: { type: "application/dicom" }, q: 0.9 },
      { type: "application", subtype: "dicom", params: {}, q: 0.5 },
      { type: "*", subtype: "*", params: {}, q: 0.1 },
    ]);
  });

  await t.step("lower-cases type, subtype and parameter names but keeps values", () => {
    const [range] = parseAccept(
      'Multipart/Related; TYPE="Application/DICOM"; Transfer-Syntax=1.2.840.10008.1.2.1',
    );
    assert.equal(range.type, "multipart");
    assert.equal(range.subtype, "related");
    assert.deepEqual(range.params, { type: "Application/DICOM", "transfer-syntax": ELE });
  });

  await t.step("unquotes quoted values, including escaped characters", () => {
    const [range] = parseAccept(
      'multipart/related; type="application/dicom"; transfer-syntax="*"; x="a\\"b, c"',
    );
    assert.deepEqual(range.params, { type: "application/dicom", "transfer-syntax": "*", x: 'a"b, c' });
  });

  await t.step("accepts whitespace around separators and empty list elements", () => {
    const ranges = parseAccept(" ,application/dicom ;  q=0.3 ,, */* ");
    assert.equal(ranges.length, 2);
    assert.equal(ranges[0].q, 0.3);
    assert.equal(ranges[1].type, "*");
  });

  await t.step("accepts q-values 0, 1, 1.000 and three decimals", () => {
    assert.equal(parseAccept("a/b;q=0")[0].q, 0);
    assert.equal(parseAccept("a/b;q=1")[0].q, 1);
    assert.equal(parseAccept("a/b;q=1.000")[0].q, 1);
    assert.equal(parseAccept("a/b;q=0.125")[0].q, 0.125);
    assert.equal(parseAccept("a/b;Q=0.5")[0].q, 0.5);
  });

  await t.step("throws a SyntaxError on an unterminated quoted value", () => {
    malformed('multipart/related; type="application/dicom');
    malformed('multipart/related; type="');
  });

  await t.step("throws a SyntaxError on a missing or empty subtype", () => {
    malformed("multipart");
    malformed("multipart/");
    malformed("multipart/; type=x");
    malformed("/dicom");
    malformed("*/dicom");
  });

  await t.step("reads q-values as clients send them: .2, 1., 0.50000; above 1 counts as 1", () => {
    const q = (value: string) => parseAccept(`application/dicom; q=${value}`)[0].q;
    assert.deepEqual(
      [".2", "1.", "0.50000", "0.1234", "1.001", "2", "0.", "00.5"].map(q),
      [0.2, 1, 0.5, 0.1234, 1, 1, 0, 0.5],
    );
  });

  await t.step("throws a SyntaxError on q-values that are not numbers", () => {
    for (const q of ["abc", "-1", "", "high", "1.2.3", "0x1"]) malformed(`application/dicom; q=${q}`);
  });

  await t.step("ignores a parameter without a value; reads a bare * as */*", () => {
    assert.deepEqual(parseAccept("application/dicom; charset")[0].params, {});
    assert.deepEqual(parseAccept("application/dicom;;x;q=0.5")[0], {
      type: "application/dicom".split("/")[0],
      subtype: "dicom",
      params: {},
      q: 0.5,
    });
    const java = parseAccept("text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2");
    assert.deepEqual(java.slice(3).map((r) => [r.type, r.subtype, r.q]), [["*", "*", 0.2], ["*", "*", 0.2]]);
  });

  await t.step("throws a SyntaxError on junk after a range", () => {
    malformed("application/dicom garbage");
    malformed("application/dicom; a=b c");
  });

  await t.step("accepts an unquoted parameter value containing '/' (type=application/dicom)", () => {
    // PS3.18 8.7: quoted and unquoted values are equivalent; dcm4che's wadors sends
    // `multipart/related;type=application/dicom;transfer-syntax=*` and OHIF sends
    // `type=application/octet-stream` unquoted.
    const [range] = parseAccept("multipart/related;type=application/dicom;transfer-syntax=*");
    assert.deepEqual(range.params, { type: "application/dicom", "transfer-syntax": "*" });
  });
});

Deno.test("rankRanges()", async (t) => {
  await t.step("drops q=0 ranges and sorts by q, then specificity, then client order", () => {
    const ranked = rankRanges(parseAccept("a/b;q=0.5, */*;q=0.5, c/d;q=0, e/*;q=0.5, f/g;q=0.9, h/i;q=0.5"));
    assert.deepEqual(ranked.map((r) => `${r.type}/${r.subtype}`), ["f/g", "a/b", "h/i", "e/*", "*/*"]);
  });
});

Deno.test("negotiateDicom()", async (t) => {
  await t.step("answers */* and a missing header with multipart in the default syntax", () => {
    for (const accept of [null, "", "*/*", "*/*;q=0.2", "multipart/*"]) {
      assert.deepEqual(
        negotiateDicom(accept, MULTI),
        { multipart: true, transferSyntaxes: [undefined] },
        String(accept),
      );
    }
  });

  await t.step(
    'takes multipart/related without type, with type="*/*" and with type="application/dicom"',
    () => {
      for (
        const accept of [
          "multipart/related",
          'multipart/related; type="*/*"',
          'multipart/related; type="application/dicom"',
        ]
      ) {
        assert.deepEqual(
          negotiateDicom(accept, MULTI),
          { multipart: true, transferSyntaxes: [undefined] },
          accept,
        );
      }
    },
  );

  await t.step("reads transfer-syntax quoted or unquoted, and '*'", () => {
    for (
      const accept of [
        'multipart/related; type="application/dicom"; transfer-syntax=*',
        'multipart/related; type="application/dicom"; transfer-syntax="*"',
        'MULTIPART/RELATED; TYPE="APPLICATION/DICOM"; TRANSFER-SYNTAX=*',
      ]
    ) {
      assert.deepEqual(negotiateDicom(accept, MULTI), { multipart: true, transferSyntaxes: ["*"] }, accept);
    }
    assert.deepEqual(
      negotiateDicom(`multipart/related; type="application/dicom"; transfer-syntax="${ELE}"`, MULTI)
        .transferSyntaxes,
      [ELE],
    );
  });

  await t.step("picks the highest q-value and lists syntaxes best first", () => {
    const accept = `multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5, ` +
      `multipart/related; type="application/dicom"; transfer-syntax=${JPEG_BASELINE}; q=0.9, ` +
      `multipart/related; type="application/dicom"; transfer-syntax=${ELE}; q=0.7`;
    assert.deepEqual(negotiateDicom(accept, MULTI), {
      multipart: true,
      transferSyntaxes: [JPEG_BASELINE, ELE, "*"],
    });
  });

  await t.step("does not repeat a syntax listed twice", () => {
    const accept = `multipart/related; type="application/dicom"; transfer-syntax=${ELE}, ` +
      `multipart/related; type="application/dicom"; transfer-syntax="${ELE}"; q=0.5`;
    assert.deepEqual(negotiateDicom(accept, MULTI).transferSyntaxes, [ELE]);
  });

  await t.step("excludes ranges with q=0", () => {
    notAcceptable('multipart/related; type="application/dicom"; q=0');
    notAcceptable("*/*;q=0");
    assert.deepEqual(
      negotiateDicom('multipart/related; type="application/dicom"; q=0, application/dicom', SINGLE),
      { multipart: false, transferSyntaxes: [undefined] },
    );
  });

  await t.step("allows bare application/dicom only for a single instance", () => {
    assert.deepEqual(negotiateDicom("application/dicom", SINGLE), {
      multipart: false,
      transferSyntaxes: [undefined],
    });
    assert.deepEqual(
      negotiateDicom(`application/dicom; transfer-syntax=${ELE}`, SINGLE),
      { multipart: false, transferSyntaxes: [ELE] },
    );
    notAcceptable("application/dicom", MULTI);
    notAcceptable(`application/dicom; transfer-syntax=*`, MULTI);
  });

  await t.step("prefers single-part or multipart by q-value when both are offered", () => {
    assert.equal(
      negotiateDicom('application/dicom;q=0.4, multipart/related; type="application/dicom";q=0.8', SINGLE)
        .multipart,
      true,
    );
    assert.equal(
      negotiateDicom('application/dicom, multipart/related; type="application/dicom";q=0.8', SINGLE)
        .multipart,
      false,
    );
    // Falls back to multipart when single-part is not allowed.
    assert.equal(
      negotiateDicom('application/dicom, multipart/related; type="application/dicom";q=0.8', MULTI).multipart,
      true,
    );
  });

  await t.step("ignores syntaxes of the other packaging once one is chosen", () => {
    const choice = negotiateDicom(
      `application/dicom; transfer-syntax=${JPEG_BASELINE}, multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5`,
      SINGLE,
    );
    assert.deepEqual(choice, { multipart: false, transferSyntaxes: [JPEG_BASELINE] });
  });

  await t.step("throws NotAcceptableError (406) for media types it cannot produce", () => {
    notAcceptable("image/jpeg");
    notAcceptable("image/png", SINGLE);
    notAcceptable("application/json");
    notAcceptable('multipart/related; type="application/octet-stream"');
    notAcceptable('multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50');
    notAcceptable("multipart/mixed");
    notAcceptable("application/dicom+json");
    notAcceptable("image/jpeg, application/json;q=0.5");
  });

  await t.step("skips what it cannot produce and takes what it can", () => {
    const choice = negotiateDicom('image/jpeg, multipart/related; type="application/dicom"; q=0.2', MULTI);
    assert.deepEqual(choice, { multipart: true, transferSyntaxes: [undefined] });
  });

  await t.step("throws SyntaxError (400) for a malformed header", () => {
    assert.throws(() => negotiateDicom('multipart/related; type="application/dicom', MULTI), SyntaxError);
    assert.throws(() => negotiateDicom("multipart", MULTI), SyntaxError);
    assert.throws(() => negotiateDicom("*/*; q=high", MULTI), SyntaxError);
  });

  await t.step("understands what dicomweb-client (JS) sends for instances", () => {
    // `_buildMultipartAcceptHeaderFieldValue`: `multipart/related; type="<mt>"[; transfer-syntax=<uid>]`, joined by ", ".
    assert.deepEqual(negotiateDicom('multipart/related; type="application/dicom"', MULTI), {
      multipart: true,
      transferSyntaxes: [undefined],
    });
    assert.deepEqual(
      negotiateDicom(
        `multipart/related; type="application/dicom"; transfer-syntax=${ELE}, ` +
          `multipart/related; type="application/dicom"; transfer-syntax=*`,
        MULTI,
      ),
      { multipart: true, transferSyntaxes: [ELE, "*"] },
    );
  });

  await t.step("understands what the Python dicomweb-client and OHIF send", () => {
    assert.deepEqual(negotiateDicom('multipart/related; type="*/*"', MULTI), {
      multipart: true,
      transferSyntaxes: [undefined],
    });
    // OHIF overrides the JS client to send */* in some data sources.
    assert.deepEqual(negotiateDicom("*/*", SINGLE), { multipart: true, transferSyntaxes: [undefined] });
    // OHIF's frame Accept (quoted variant) names octet-stream: not an instance media type.
    notAcceptable('multipart/related; type="application/octet-stream"; transfer-syntax=*');
  });

  await t.step("is not a SyntaxError for OHIF's unquoted frame Accept", () => {
    // `multipart/related; type=application/octet-stream; transfer-syntax=*` is what OHIF sends (DICOMWEB.md).
    // On an instance resource this is a 406, not a 400.
    notAcceptable("multipart/related; type=application/octet-stream; transfer-syntax=*");
  });

  await t.step("treats unquoted type=application/dicom like the quoted form", () => {
    assert.deepEqual(
      negotiateDicom("multipart/related;type=application/dicom;transfer-syntax=*", MULTI),
      { multipart: true, transferSyntaxes: ["*"] },
    );
  });
});

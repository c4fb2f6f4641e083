import assert from "node:assert/strict";
import { parseListObjectsV2, unescapeXml } from "../../../lib/store/s3/s3_xml.ts";

const AWS_PAGE = `<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>dicom</Name>
  <Prefix>1.2/</Prefix>
  <KeyCount>2</KeyCount>
  <MaxKeys>2</MaxKeys>
  <IsTruncated>true</IsTruncated>
  <Contents>
    <Key>1.2/3.4/5.6.dcm</Key>
    <LastModified>2026-11-28T04:00:00.000Z</LastModified>
    <ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag>
    <Size>39206</Size>
    <StorageClass>STANDARD</StorageClass>
  </Contents>
  <Contents>
    <Key>1.2/3.4/odd &amp; &lt;name&gt; &#x41;&#66;.dcm</Key>
    <LastModified>2026-11-28T04:00:01.000Z</LastModified>
    <ETag>"d41d8cd98f00b204e9800998ecf8427e-3"</ETag>
    <Size>0</Size>
    <Owner><ID>x</ID><DisplayName>y</DisplayName></Owner>
  </Contents>
  <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
</ListBucketResult>`;

Deno.test("parseListObjectsV2()", async (t) => {
  await t.step("reads keys, sizes, unquoted ETags, dates, the truncation and the token", () => {
    const page = parseListObjectsV2(AWS_PAGE);
    assert.deepEqual(page, {
      objects: [
        {
          key: "1.2/3.4/5.6.dcm",
          size: 39206,
          etag: "9b2cf535f27731c974343645a3985328",
          lastModified: new Date("2026-11-28T04:00:00.000Z"),
        },
        {
          key: "1.2/3.4/odd & <name> AB.dcm",
          size: 0,
          etag: "d41d8cd98f00b204e9800998ecf8427e-3",
          lastModified: new Date("2026-11-28T04:00:01.000Z"),
        },
      ],
      truncated: true,
      nextToken: "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=",
    });
  });

  await t.step("an empty last page (fields after no entries, self-closing elements)", () => {
    const page = parseListObjectsV2(
      "<ListBucketResult><Name>b</Name><Prefix/><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>",
    );
    assert.deepEqual(page, { objects: [], truncated: false, nextToken: undefined });
  });

  await t.step("a token that only appears after the entries is found; one inside a key is not", () => {
    const page = parseListObjectsV2(
      "<ListBucketResult><Contents><Key>&lt;NextContinuationToken&gt;x</Key><Size>1</Size></Contents>" +
        "<IsTruncated>true</IsTruncated><NextContinuationToken>abc</NextContinuationToken></ListBucketResult>",
    );
    assert.equal(page.objects[0].key, "<NextContinuationToken>x");
    assert.equal(page.nextToken, "abc");
    assert.equal(page.truncated, true);
  });

  await t.step("what is not a listing is a SyntaxError saying what came", () => {
    assert.throws(
      () => parseListObjectsV2("<html><body>proxy error</body></html>"),
      /Not an S3 listing.*proxy error/,
    );
    assert.throws(
      () => parseListObjectsV2("<ListBucketResult><Contents><Key>a</Key>"),
      /<Contents> is not closed/,
    );
    assert.throws(
      () => parseListObjectsV2("<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>"),
      /no <Key>/,
    );
    assert.throws(
      () =>
        parseListObjectsV2(
          "<ListBucketResult><Contents><Key>a</Key><Size>-1</Size></Contents></ListBucketResult>",
        ),
      /size -1/,
    );
  });

  await t.step("unescapeXml() resolves the five entities and numeric references, and leaves others", () => {
    assert.equal(
      unescapeXml("a&amp;b&lt;&gt;&quot;&apos;&#233;&#xE9;&unknown;"),
      `a&b<>"'éé&unknown;`,
    );
    assert.equal(unescapeXml("plain"), "plain");
  });
});

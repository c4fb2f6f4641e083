/**
 * Reads S3's ListObjectsV2 answer (`ListBucketResult` XML) without the AWS SDK's generic XML deserializer,
 * which costs more CPU than the listing round trip itself (≈ 0.1 ms per key): series metadata and retrieval
 * list before they read, so this is on every request's path.
 *
 * @module
 */

import type { ObjectInfo } from "../store.ts";
import { MalformedError } from "../../util/errors.ts";

/** One page of a ListObjectsV2 answer. */
export interface ListPage {
  objects: ObjectInfo[];
  /** The token for the next page; undefined on the last page. */
  nextToken?: string;
  truncated: boolean;
}

const ENTITIES: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };

/** XML character data with its entity and character references resolved. */
export function unescapeXml(text: string): string {
  if (!text.includes("&")) return text;
  return text.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);/g, (whole, name: string) => {
    if (name.startsWith("#x")) return String.fromCodePoint(parseInt(name.slice(2), 16));
    if (name.startsWith("#")) return String.fromCodePoint(parseInt(name.slice(1), 10));
    return ENTITIES[name] ?? whole;
  });
}

function field(block: string, name: string): string | undefined {
  const open = block.indexOf(`<${name}>`);
  if (open < 0) {
    // an empty element: <Name/>
    return block.includes(`<${name}/>`) ? "" : undefined;
  }
  const start = open + name.length + 2;
  const end = block.indexOf(`</${name}>`, start);
  if (end < 0) throw new MalformedError(`Malformed S3 listing: <${name}> is not closed`);
  return unescapeXml(block.slice(start, end));
}

/**
 * Parses one ListObjectsV2 page. Keys are taken as sent (no `encoding-type` is asked for); ETags lose
 * their quotes. A body that is not a `ListBucketResult` is a `SyntaxError`.
 *
 * @example
 * ```ts
 * import { parseListObjectsV2 } from "./s3_xml.ts";
 * const page = parseListObjectsV2(
 *   '<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>1/2/3.dcm</Key>' +
 *     "<LastModified>2026-01-02T03:04:05.000Z</LastModified><ETag>&quot;ab&quot;</ETag><Size>7</Size></Contents>" +
 *     "</ListBucketResult>",
 * );
 * page.objects[0]; // { key: "1/2/3.dcm", size: 7, etag: "ab", lastModified: new Date("2026-01-02T03:04:05.000Z") }
 * ```
 */
export function parseListObjectsV2(xml: string): ListPage {
  const root = xml.indexOf("<ListBucketResult");
  if (root < 0) {
    throw new MalformedError(
      `Not an S3 listing (no ListBucketResult): ${xml.slice(0, 120).replace(/\s+/g, " ")}`,
    );
  }
  const objects: ObjectInfo[] = [];
  let at = root;
  let tail = root;
  for (;;) {
    const open = xml.indexOf("<Contents>", at);
    if (open < 0) break;
    const close = xml.indexOf("</Contents>", open);
    if (close < 0) throw new MalformedError("Malformed S3 listing: <Contents> is not closed");
    const block = xml.slice(open + 10, close);
    const key = field(block, "Key");
    if (key === undefined) throw new MalformedError("Malformed S3 listing: an entry has no <Key>");
    const size = Number(field(block, "Size") ?? "0");
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new MalformedError(`Malformed S3 listing: entry "${key}" has size ${field(block, "Size")}`);
    }
    const modified = field(block, "LastModified");
    const date = modified ? new Date(modified) : undefined;
    objects.push({
      key,
      size,
      etag: (field(block, "ETag") ?? "").replace(/^"|"$/g, ""),
      lastModified: date && !Number.isNaN(date.getTime()) ? date : undefined,
    });
    at = tail = close + 11;
  }
  // the page's own fields come before or after the entries; read them outside the entries
  const first = xml.indexOf("<Contents>", root);
  const outside = first < 0 ? xml.slice(root) : xml.slice(root, first) + xml.slice(tail);
  const truncated = field(outside, "IsTruncated") === "true";
  const token = field(outside, "NextContinuationToken");
  return { objects, truncated, nextToken: token === "" ? undefined : token };
}

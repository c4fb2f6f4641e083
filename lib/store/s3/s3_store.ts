/**
 * {@linkcode ObjectStore} on an S3-compatible server (AWS S3, Ceph RGW, MinIO, s3rver).
 *
 * The only module that imports the AWS SDK. One `S3Client` per store; what it sends goes through
 * `FetchHttpHandler` (Deno's `fetch`).
 *
 * GetObject, ListObjectsV2 and single-request PutObject, the hot paths of retrieval, crawling and STOW-RS,
 * skip the SDK's per-request middleware (about 1 ms of CPU per request, as much as streaming a 500 KB body):
 * the SDK's own endpoint rules and SigV4 signer (with its credential chain) sign a plain request, the
 * payload hash included, which {@linkcode Http1Client} sends over kept-alive sockets: a PUT's bytes go out
 * without a copy, and a GET's body is read from the socket straight into the consumer's buffer (`fetch`
 * costs about 0.5 s of CPU per GB more). When an HTTP proxy is configured (`HTTP_PROXY`, `HTTPS_PROXY`,
 * `ALL_PROXY`), which only `fetch` follows, they go through `fetch` instead.
 * Everything else goes through `client.send`.
 *
 * Why one file of ~700 lines: {@linkcode S3Store} is one class whose operations share the client, the route
 * cache, the request slots and the retry loop; error mapping (s3_errors.ts), bucket routing (s3_routing.ts),
 * multipart helpers (s3_parts.ts), listing XML (s3_xml.ts) and the HTTP/1.1 client (http1.ts) are apart.
 *
 * @module
 */

import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListBucketsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { FetchHttpHandler } from "@smithy/fetch-http-handler";
import { Http1Client } from "./http1.ts";
import { type ListPage, parseListObjectsV2 } from "./s3_xml.ts";
import { createHash } from "node:crypto";
import {
  checkRange,
  type GetOptions,
  type ListOptions,
  type ObjectBody,
  type ObjectInfo,
  type ObjectStore,
  type PutOptions,
  type ReadOptions,
  StoreError,
} from "../store.ts";
import { OutOfRangeError } from "../../util/errors.ts";
import { backoff, isMissingKey, isTransient, statusOf, toStoreError, type Where } from "./s3_errors.ts";
import { escapeSegment, resolveRoute, type Route } from "./s3_routing.ts";
import { PartReader, slice, Slots } from "./s3_parts.ts";

/** Static credentials; without them the SDK's default chain applies (env vars, profiles, instance roles). */
export interface S3Credentials {
  /** Access key ID. */
  accessKeyId: string;
  /** Secret access key. */
  secretAccessKey: string;
  /** Session token (temporary credentials). */
  sessionToken?: string;
}

/** Options for {@linkcode S3Store}. */
export interface S3StoreOptions {
  /** Server URL, e.g. `http://127.0.0.1:7480`; omitted for AWS S3. */
  endpoint?: string;
  /** Signing region, e.g. `us-east-1`. */
  region: string;
  /** Bucket in the path instead of the host name. Default: `true` when `endpoint` is set. */
  forcePathStyle?: boolean;
  /** Default: the AWS SDK's credential chain. */
  credentials?: S3Credentials;
  /** Most requests waiting for S3's answer at once (a GET counts until its headers arrive). Default 50. */
  maxConcurrency?: number;
  /** Keys per ListObjectsV2 page (MaxKeys). Default 1000, the S3 maximum. */
  pageSize?: number;
  /**
   * Keys in the first page of a listing of a prefix not listed before, so its first objects can be fetched
   * sooner; the next pages hold `pageSize` keys, each requested as soon as the previous one arrives. A prefix
   * listed before starts with a page as large as that listing was (up to `pageSize`). Default 8.
   */
  firstPageSize?: number;
  /** Part size for multipart uploads; streams up to this size go up in one PutObject. Default 8 MiB. */
  partSize?: number;
  /** Attempts per request including retries (the SDK retries throttling and network errors). Default 3. */
  maxAttempts?: number;
  /**
   * Milliseconds to wait for an answer (the response headers; for uploads that includes sending the body),
   * retries included. Default 60 000.
   */
  requestTimeout?: number;
}

const MIB = 1024 * 1024;
/** SHA-256 of no bytes: the payload hash of a GET. */
const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/** S3 allows at most this many parts per multipart upload. */
const MAX_PARTS = 10_000;
/** Part uploads in flight at once for one multipart upload. */
const PARTS_IN_FLIGHT = 2;
/** Attempts at AbortMultipartUpload after a failed multipart upload, and the wait after the first. */
const ABORT_ATTEMPTS = 5;
const ABORT_BACKOFF_MS = 500;

/**
 * S3-backed object store.
 *
 * @example
 * ```ts ignore
 * const store = new S3Store({ endpoint: "http://127.0.0.1:7480", region: "us-east-1" });
 * for await (const info of store.list("DICOM", "1.2.3/")) console.log(info.key, info.size);
 * ```
 */
export class S3Store implements ObjectStore {
  readonly kind = "s3";
  readonly location: string;
  #client: S3Client;
  #slots: Slots;
  #pageSize: number;
  #firstPageSize: number;
  #partSize: number;
  #timeout: number;
  #maxAttempts: number;
  /** Per bucket: where its GETs and PUTs go and how they are signed (`null`: let the SDK send them). */
  #routes = new Map<string, Promise<Route | null>>();
  /** Keys found by the last whole listing of each bucket and prefix (sizes the next one's first page). */
  #listed = new Map<string, number>();
  /** Sends GETs, listings and PUTs; none when a proxy is configured. */
  #http1?: Http1Client;

  /** A store on the S3 server of `options`. */
  constructor(options: S3StoreOptions) {
    const { endpoint, region } = options;
    this.location = endpoint ?? `AWS S3 (${region})`;
    this.#pageSize = positive(options.pageSize ?? 1000, "pageSize");
    this.#firstPageSize = Math.min(positive(options.firstPageSize ?? 8, "firstPageSize"), this.#pageSize);
    this.#partSize = positive(options.partSize ?? 8 * MIB, "partSize");
    this.#slots = new Slots(positive(options.maxConcurrency ?? 50, "maxConcurrency"));
    this.#timeout = positive(options.requestTimeout ?? 60_000, "requestTimeout");
    this.#maxAttempts = positive(options.maxAttempts ?? 3, "maxAttempts");
    this.#client = new S3Client({
      endpoint,
      region,
      forcePathStyle: options.forcePathStyle ?? endpoint !== undefined,
      credentials: options.credentials,
      maxAttempts: this.#maxAttempts,
      // s3rver stores aws-chunked framing and Ceph answers 411 to streamed PUTs in the default mode
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
      requestHandler: new FetchHttpHandler(),
    });
    // raw sockets where the runtime has them (Deno, Deno Deploy); `fetch` otherwise and behind a proxy
    if (typeof Deno.connect === "function" && !proxyConfigured()) this.#http1 = new Http1Client();
  }

  async listBuckets(options: ReadOptions = {}): Promise<string[]> {
    const out = await this.#send(
      { op: "list buckets" },
      options.signal,
      (client, o) => client.send(new ListBucketsCommand({}), o),
    );
    return (out.Buckets ?? []).map((b) => b.Name ?? "").filter((name) => name !== "");
  }

  async *list(bucket: string, prefix: string, options: ListOptions = {}): AsyncIterable<ObjectInfo> {
    const route = await this.#route(bucket);
    const page = (token: string | undefined, size: number): Promise<ListPage> =>
      this.#send(
        { op: "list", bucket, key: prefix },
        options.signal,
        async (client, o) => {
          const startAfter = token === undefined ? options.startAfter : undefined;
          if (route) {
            // a plain signed GET and a lean parse: the SDK's XML deserializer costs ≈ 0.1 ms of CPU per key
            const query: Record<string, string> = { "list-type": "2", "max-keys": String(size) };
            if (prefix !== "") query.prefix = prefix;
            if (token !== undefined) query["continuation-token"] = token;
            if (startAfter !== undefined) query["start-after"] = startAfter;
            const response = await this.#fetchSigned(route, "", {
              method: "GET",
              headers: { "x-amz-content-sha256": EMPTY_SHA256 },
              query,
            }, o.abortSignal!);
            return parseListObjectsV2(await textOf(response.body));
          }
          const out = await client.send(
            new ListObjectsV2Command({
              Bucket: bucket,
              Prefix: prefix === "" ? undefined : prefix,
              MaxKeys: size,
              ContinuationToken: token,
              StartAfter: startAfter,
            }),
            o,
          );
          return {
            objects: (out.Contents ?? []).map((item) => ({
              key: item.Key ?? "",
              size: item.Size ?? 0,
              etag: unquote(item.ETag),
              lastModified: item.LastModified,
            })),
            truncated: out.IsTruncated === true,
            nextToken: out.NextContinuationToken,
          };
        },
      );
    // A listing's time is mostly fixed cost (on Ceph RGW 8 keys take 8.5 ms, 500 keys 15 ms; two pages at
    // once are no faster than one after the other): a small first page brings the first keys soonest, then
    // whole pages. A prefix listed before starts with a page that holds all it had, one round trip.
    const id = `${bucket}\u0000${prefix}`;
    const known = options.startAfter === undefined ? this.#listed.get(id) : undefined;
    // A caller that wants the first keys soonest (a retrieve: its first GETs wait for them) says how many.
    const hint = options.firstPage;
    let size = hint !== undefined && Number.isSafeInteger(hint) && hint > 0
      ? Math.min(hint, this.#pageSize)
      : known === undefined
      ? this.#firstPageSize
      : Math.min(known + 1, this.#pageSize);
    let next: Promise<ListPage> | undefined = page(undefined, size);
    let count = 0;
    while (next) {
      const out: ListPage = await next;
      const token = out.truncated ? out.nextToken : undefined;
      if (out.truncated && !token) {
        throw new StoreError(
          "failed",
          `S3 listing of bucket "${bucket}" is truncated without a continuation token`,
        );
      }
      // ask for the next page now: it arrives while this one is consumed
      size = this.#pageSize;
      next = token ? page(token, size) : undefined;
      next?.catch(() => {}); // awaited on the next turn, unless the consumer stops first
      count += out.objects.length;
      if (!next && options.startAfter === undefined) this.#remember(id, count);
      yield* out.objects;
    }
  }

  /** Records how many keys a listing of a prefix found (a bounded map; the oldest go first). */
  #remember(id: string, count: number): void {
    this.#listed.delete(id);
    if (this.#listed.size >= 1024) this.#listed.delete(this.#listed.keys().next().value!);
    this.#listed.set(id, count);
  }

  async head(bucket: string, key: string, options: ReadOptions = {}): Promise<ObjectInfo | null> {
    try {
      const out = await this.#send(
        { op: "head", bucket, key },
        options.signal,
        (client, o) => client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }), o),
      );
      return { key, size: out.ContentLength ?? 0, etag: unquote(out.ETag), lastModified: out.LastModified };
    } catch (error) {
      if (isMissingKey(error)) return null;
      throw error;
    }
  }

  async get(bucket: string, key: string, options: GetOptions = {}): Promise<ObjectBody | null> {
    const { range, signal } = options;
    if (range) checkRange(range);
    const rangeHeader = range && `bytes=${range.start}-${range.end ?? ""}`;
    const route = await this.#route(bucket);
    let out: GetOutput;
    try {
      out = await this.#send(
        { op: "get", bucket, key },
        signal,
        (client, o) =>
          route ? this.#fetchGet(route, key, rangeHeader, o.abortSignal!) : client.send(
            new GetObjectCommand({ Bucket: bucket, Key: key, Range: rangeHeader }),
            o,
          ) as Promise<
            GetOutput
          >,
      );
    } catch (error) {
      if (isMissingKey(error)) return null;
      if (statusOf(error) === 416) {
        throw new OutOfRangeError(`Range start ${range?.start} is past the end of ${bucket}/${key}`, {
          cause: error,
        });
      }
      throw error;
    }
    const body = out.Body as ReadableStream<Uint8Array>;
    const length = out.ContentLength ?? 0;
    const etag = unquote(out.ETag);
    const lastModified = out.LastModified;
    const span = out.ContentRange && /^bytes (\d+)-(\d+)\/(\d+)$/.exec(out.ContentRange);
    const size = span ? Number(span[3]) : length;
    const info = { key, size, etag, lastModified };
    if (!range) return { info, start: 0, length, body };
    // s3rver answers `bytes=0-` on an empty object with "bytes 0-0/0"; others ignore the range
    if (range.start >= size) {
      await body.cancel().catch(() => {});
      throw new OutOfRangeError(
        `Range start ${range.start} is past the end of ${bucket}/${key} (${size} bytes)`,
      );
    }
    const end = Math.min(range.end ?? size - 1, size - 1);
    if (span && Number(span[1]) === range.start && Number(span[2]) === end) {
      return { info, start: range.start, length: end - range.start + 1, body };
    }
    // the server ignored the range: apply it here
    const from = span ? range.start - Number(span[1]) : range.start;
    if (from < 0) {
      await body.cancel().catch(() => {});
      throw new StoreError(
        "failed",
        `S3 at ${this.location} sent ${out.ContentRange} for bytes=${range.start}-`,
      );
    }
    return {
      info,
      start: range.start,
      length: end - range.start + 1,
      body: slice(body, from, from + end - range.start + 1),
    };
  }

  async put(
    bucket: string,
    key: string,
    body: ReadableStream<Uint8Array> | Uint8Array,
    options: PutOptions = {},
  ): Promise<ObjectInfo> {
    const { size, signal } = options;
    if (body instanceof Uint8Array) {
      if (size !== undefined && size !== body.byteLength) {
        throw new OutOfRangeError(`Body of ${bucket}/${key} has ${body.byteLength} bytes, expected ${size}`);
      }
      return await this.#putOne(bucket, key, body, options);
    }
    const partSize = Math.max(this.#partSize, Math.ceil((size ?? 0) / MAX_PARTS));
    const parts = new PartReader(body.getReader(), partSize, signal);
    try {
      const first = await parts.next();
      if (!first || !(await parts.hasMore())) {
        const data = first ?? new Uint8Array(0);
        if (size !== undefined && size !== data.byteLength) {
          throw new OutOfRangeError(
            `Body of ${bucket}/${key} has ${data.byteLength} bytes, expected ${size}`,
          );
        }
        return await this.#putOne(bucket, key, data, options);
      }
      return await this.#putMultipart(bucket, key, first, parts, options);
    } catch (error) {
      await parts.cancel(error);
      throw error;
    }
  }

  async delete(bucket: string, key: string, options: ReadOptions = {}): Promise<void> {
    try {
      await this.#send(
        { op: "delete", bucket, key },
        options.signal,
        (client, o) => client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }), o),
      );
    } catch (error) {
      if (!isMissingKey(error)) throw error;
    }
  }

  async check(bucket: string, options: ReadOptions = {}): Promise<void> {
    await this.#send(
      { op: "check", bucket },
      options.signal,
      (client, o) => client.send(new HeadBucketCommand({ Bucket: bucket }), o),
    );
  }

  close(): void {
    this.#client.destroy();
    this.#http1?.close();
  }

  async #putOne(bucket: string, key: string, data: Uint8Array, options: PutOptions): Promise<ObjectInfo> {
    const route = await this.#route(bucket);
    const out = await this.#send(
      { op: "put", bucket, key },
      options.signal,
      (client, o) =>
        route ? this.#fetchPut(route, key, data, options.contentType, o.abortSignal!) : client.send(
          new PutObjectCommand({
            Bucket: bucket,
            Key: key,
            Body: data,
            ContentLength: data.byteLength,
            ContentType: options.contentType,
          }),
          o,
        ),
    );
    return { key, size: data.byteLength, etag: unquote(out.ETag) };
  }

  /** Uploads `first` then the rest of `parts`, at most {@linkcode PARTS_IN_FLIGHT} at once; aborts on failure. */
  async #putMultipart(
    bucket: string,
    key: string,
    first: Uint8Array,
    parts: PartReader,
    options: PutOptions,
  ): Promise<ObjectInfo> {
    const where = { op: "put", bucket, key };
    const created = await this.#send(
      where,
      options.signal,
      (client, o) =>
        client.send(
          new CreateMultipartUploadCommand({ Bucket: bucket, Key: key, ContentType: options.contentType }),
          o,
        ),
    );
    const uploadId = created.UploadId;
    // stops the other part uploads (and the source stream) as soon as one fails
    const abort = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, abort.signal]) : abort.signal;
    const done: { PartNumber: number; ETag?: string }[] = [];
    const inFlight = new Set<Promise<void>>();
    const state: { failure?: { error: unknown } } = {};
    const throwIfFailed = () => {
      if (state.failure) throw state.failure.error;
    };
    let total = 0;
    try {
      for (let number = 1;; number++) {
        const data = number === 1 ? first : await parts.next();
        throwIfFailed();
        if (!data) break;
        if (number > MAX_PARTS) {
          throw new OutOfRangeError(
            `Body of ${bucket}/${key} needs more than ${MAX_PARTS} parts: pass its size`,
          );
        }
        total += data.byteLength;
        const upload = this.#send(where, signal, (client, o) =>
          client.send(
            new UploadPartCommand({
              Bucket: bucket,
              Key: key,
              UploadId: uploadId,
              PartNumber: number,
              Body: data,
              ContentLength: data.byteLength,
            }),
            o,
          )).then(
            (out) => void done.push({ PartNumber: number, ETag: out.ETag }),
            (error) => {
              state.failure ??= { error };
              abort.abort(error);
              void parts.cancel(error);
            },
          ).finally(() => inFlight.delete(upload));
        inFlight.add(upload);
        while (inFlight.size >= PARTS_IN_FLIGHT) await Promise.race(inFlight);
      }
      await Promise.all(inFlight);
      throwIfFailed();
      if (options.size !== undefined && options.size !== total) {
        throw new OutOfRangeError(`Body of ${bucket}/${key} has ${total} bytes, expected ${options.size}`);
      }
      done.sort((a, b) => a.PartNumber - b.PartNumber);
      const out = await this.#send(
        where,
        options.signal,
        (client, o) =>
          client.send(
            new CompleteMultipartUploadCommand({
              Bucket: bucket,
              Key: key,
              UploadId: uploadId,
              MultipartUpload: { Parts: done },
            }),
            o,
          ),
      );
      const etag = unquote(out.ETag);
      if (etag !== "") return { key, size: total, etag };
      // Ceph 16 answers with an empty <ETag/>: ask for it
      return await this.head(bucket, key, { signal: options.signal }) ?? { key, size: total, etag };
    } catch (thrown) {
      const error = state.failure ? state.failure.error : thrown;
      abort.abort(error);
      await Promise.allSettled(inFlight);
      await this.#abortUpload(bucket, key, uploadId);
      throw error;
    }
  }

  /**
   * AbortMultipartUpload, tried again over a few seconds when S3 does not take it (an outage is often why
   * the upload failed), so its parts are not left behind: each attempt has the SDK's own retries, then
   * {@linkcode ABORT_ATTEMPTS} attempts in all, {@linkcode ABORT_BACKOFF_MS} × 2^(n−1) apart (with jitter),
   * none started after `requestTimeout`. Gives up silently: an upload left over is invisible to GET and LIST
   * and a lifecycle rule (AbortIncompleteMultipartUpload) removes it.
   */
  async #abortUpload(bucket: string, key: string, uploadId: string | undefined): Promise<void> {
    const started = Date.now();
    for (let attempt = 1;; attempt++) {
      try {
        // no signal: the caller's may be aborted already, and the parts must not stay behind
        await this.#send(
          { op: "abort upload", bucket, key },
          undefined,
          (client, o) =>
            client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId }), o),
        );
        return;
      } catch (error) {
        // only S3 away, overloaded or failing may answer differently later (NoSuchUpload: aborted already)
        if (!isTransient(error)) return;
        const wait = ABORT_BACKOFF_MS * 2 ** (attempt - 1) * (0.5 + Math.random() / 2);
        if (attempt >= ABORT_ATTEMPTS || Date.now() - started + wait > this.#timeout) return;
        await new Promise((resolve) => setTimeout(resolve, wait));
      }
    }
  }

  /**
   * The bucket's route for GET and PUT, resolved once by the SDK's endpoint rules; `null` when it needs more
   * than SigV4.
   */
  #route(bucket: string): Promise<Route | null> {
    let route = this.#routes.get(bucket);
    if (!route) {
      if (this.#routes.size >= 1000) this.#routes.clear();
      route = resolveRoute(this.#client, bucket).catch(() => null);
      this.#routes.set(bucket, route);
    }
    return route;
  }

  /** GetObject as one signed request (see {@linkcode S3Store.#fetchSigned}). */
  async #fetchGet(
    route: Route,
    key: string,
    range: string | undefined,
    signal: AbortSignal,
  ): Promise<GetOutput> {
    // the payload hash given up front spares the signer hashing an empty body
    const headers: Record<string, string> = { "x-amz-content-sha256": EMPTY_SHA256 };
    if (range) headers.range = range;
    const response = await this.#fetchSigned(route, key, { method: "GET", headers }, signal);
    const header = (name: string) => response.headers.get(name) ?? undefined;
    const lastModified = header("last-modified");
    return {
      Body: response.body ?? new ReadableStream({ start: (c) => c.close() }),
      ContentLength: Number(header("content-length") ?? 0),
      ETag: header("etag"),
      LastModified: lastModified === undefined ? undefined : new Date(lastModified),
      ContentRange: header("content-range"),
    };
  }

  /** PutObject of a whole body as one signed request, its SHA-256 signed as the SDK signs it. */
  async #fetchPut(
    route: Route,
    key: string,
    data: Uint8Array,
    contentType: string | undefined,
    signal: AbortSignal,
  ): Promise<{ ETag?: string }> {
    const headers: Record<string, string> = {
      "x-amz-content-sha256": createHash("sha256").update(data).digest("hex"),
    };
    if (contentType) headers["content-type"] = contentType;
    const response = await this.#fetchSigned(route, key, { method: "PUT", headers, body: data }, signal);
    await response.body?.cancel().catch(() => {});
    return { ETag: response.headers.get("etag") ?? undefined };
  }

  /**
   * One signed request on `key`, with the SDK's retry rule for what failed before an answer came (network
   * errors, 429 and 5xx: up to `maxAttempts`, exponential backoff with jitter). Sent by
   * {@linkcode Http1Client} (the body of the answer streams straight from the socket), or by `fetch` when a
   * proxy is configured. Resolves to a 2xx answer; failures are thrown shaped like the SDK's (`name` = S3
   * error code, `$metadata.httpStatusCode`). `headers` must hold `x-amz-content-sha256`.
   */
  async #fetchSigned(
    route: Route,
    key: string,
    request: {
      method: "GET" | "PUT";
      headers: Record<string, string>;
      body?: Uint8Array;
      query?: Record<string, string>;
    },
    signal: AbortSignal,
  ): Promise<Answer> {
    const bucketPath = route.base.pathname.replace(/\/$/, "");
    // key "": the bucket itself (a listing)
    const path = key === ""
      ? bucketPath || "/"
      : bucketPath + "/" + key.split("/").map(escapeSegment).join("/");
    // encoded once: the signed and the sent query are the same
    const encodedQuery: [string, string][] = Object.entries(request.query ?? {}).map((
      [name, value],
    ) => [escapeSegment(name), escapeSegment(value)]);
    const search = encodedQuery.map(([name, value]) => `${name}=${value}`).join("&");
    // one parse (each URL setter parses again)
    const url = new URL(`${route.base.origin}${path}${search === "" ? "" : `?${search}`}`);
    const { "x-amz-content-sha256": payloadHash, ...headers } = request.headers;
    for (let attempt = 1;; attempt++) {
      const signed = {
        headers: route.sigv4.sign(
          {
            method: request.method,
            host: url.host,
            path: url.pathname,
            query: encodedQuery,
            headers,
            payloadHash,
          },
          await route.credentials(),
          new Date(Date.now() + route.clockOffset()),
        ),
      };
      let response: Answer;
      try {
        if (request.body && this.#http1) {
          const answer = await this.#http1.request({
            method: request.method,
            url,
            headers: signed.headers,
            body: request.body,
            signal,
          });
          response = { status: answer.status, headers: answer.headers, body: null };
          if (answer.body.byteLength > 0) response.body = new Blob([answer.body]).stream();
        } else if (this.#http1) {
          response = await this.#http1.stream({
            method: request.method,
            url,
            headers: signed.headers,
            signal,
          });
        } else {
          response = await fetch(url, {
            method: request.method,
            headers: signed.headers,
            body: request.body as Uint8Array<ArrayBuffer> | undefined,
            signal,
          });
        }
      } catch (error) {
        if (signal.aborted || attempt >= this.#maxAttempts) throw error;
        await backoff(attempt, signal);
        continue;
      }
      if (response.status >= 200 && response.status < 300) return response;
      const text = await textOf(response.body).catch(() => "");
      const code = /<Code>([^<]*)<\/Code>/.exec(text)?.[1];
      const status = response.status;
      if ((status === 429 || status >= 500) && attempt < this.#maxAttempts) {
        await backoff(attempt, signal);
        continue;
      }
      const message = /<Message>([^<]*)<\/Message>/.exec(text)?.[1] || `HTTP ${status}`;
      throw Object.assign(new Error(message), {
        name: code || (status === 404 ? "NotFound" : String(status)),
        $metadata: { httpStatusCode: status },
      });
    }
  }

  /** Runs one request within the concurrency limit and turns failures into {@linkcode StoreError}s. */
  async #send<T>(
    where: Where,
    signal: AbortSignal | undefined,
    request: (client: S3Client, options: { abortSignal?: AbortSignal }) => Promise<T>,
  ): Promise<T> {
    await this.#slots.acquire(signal);
    // aborts a request that gets no answer in time; cleared once the headers are in, so a body streams on
    const timeout = new AbortController();
    const timer = setTimeout(
      () => timeout.abort(new DOMException(`No answer within ${this.#timeout} ms`, "TimeoutError")),
      this.#timeout,
    );
    try {
      const abortSignal = signal ? AbortSignal.any([signal, timeout.signal]) : timeout.signal;
      return await request(this.#client, { abortSignal });
    } catch (error) {
      if (timeout.signal.aborted && !signal?.aborted) {
        throw new StoreError(
          "unavailable",
          `S3 at ${this.location} did not answer ${where.op} within ${this.#timeout} ms (check that the server is up)`,
          { cause: error },
        );
      }
      throw toStoreError(error, where, this.location, signal);
    } finally {
      clearTimeout(timer);
      this.#slots.release();
    }
  }
}

/** An HTTP answer as {@linkcode S3Store} reads it: a `fetch` `Response` or an {@linkcode Http1Client} answer. */
interface Answer {
  status: number;
  headers: Headers;
  body: ReadableStream<Uint8Array> | null;
}

/** The body of an answer as text (UTF-8). */
async function textOf(body: ReadableStream<Uint8Array> | null): Promise<string> {
  return body === null ? "" : await new Response(body).text();
}

/** The parts of a GetObject answer the store reads. */
interface GetOutput {
  Body?: unknown;
  ContentLength?: number;
  ETag?: string;
  LastModified?: Date;
  ContentRange?: string;
}

/** Whether `fetch` would send through a proxy (the variables it reads; unreadable ones count as unset). */
function proxyConfigured(): boolean {
  return ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"].some((name) => {
    try {
      return Boolean(Deno.env.get(name));
    } catch {
      return false;
    }
  });
}

function unquote(etag: string | undefined): string {
  return (etag ?? "").replace(/^(W\/)?"(.*)"$/, "$2");
}

function positive(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new OutOfRangeError(`${name} must be a positive integer: ${value}`);
  }
  return value;
}

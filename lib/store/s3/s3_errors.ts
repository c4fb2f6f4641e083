/**
 * S3 failures as the store reports them: SDK and HTTP errors mapped to `StoreError` kinds (unavailable,
 * denied, no bucket, failed) with messages that name the endpoint and the fix, and which failures are worth a
 * retry (with backoff).
 *
 * @module
 */

import { StoreError } from "../store.ts";

export interface Where {
  op: string;
  bucket?: string;
  key?: string;
}

/** Waits before retry `attempt` + 1: full jitter over 100 ms × 2^(attempt − 1), at most 20 s. */
export function backoff(attempt: number, signal: AbortSignal): Promise<void> {
  const ms = Math.random() * Math.min(20_000, 100 * 2 ** (attempt - 1));
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** Turns an SDK or network failure into a {@linkcode StoreError}; passes aborts and not-founds through. */
export function toStoreError(error: unknown, where: Where, location: string, signal?: AbortSignal): unknown {
  if (signal?.aborted) return signal.reason;
  if (error instanceof StoreError) return error;
  const name = (error as Error)?.name ?? "Error";
  const message = (error as Error)?.message ?? String(error);
  const status = statusOf(error);
  const target = where.bucket === undefined
    ? location
    : `bucket "${where.bucket}"${where.key ? ` key "${where.key}"` : ""} at ${location}`;
  if (name === "NoSuchBucket" || (where.op === "check" && status === 404)) {
    return new StoreError(
      "no-bucket",
      `S3 bucket "${where.bucket}" does not exist at ${location}: create it or configure an existing bucket`,
      { cause: error },
    );
  }
  if (isMissingKey(error) || status === 416) return error;
  if (name === "CredentialsProviderError") {
    return new StoreError(
      "denied",
      `No S3 credentials for ${location}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an AWS profile`,
      { cause: error },
    );
  }
  if (
    status === 403 || name === "AccessDenied" || name === "InvalidAccessKeyId" ||
    name === "SignatureDoesNotMatch"
  ) {
    return new StoreError(
      "denied",
      `S3 denied ${where.op} on ${target}: ${/^(Error|Unknown|\d+)$/.test(name) ? "Forbidden" : name}` +
        ` (check the access key, secret and the bucket's policy)`,
      { cause: error },
    );
  }
  if ((status === undefined && isNetworkError(error)) || status === 502 || status === 503 || status === 504) {
    const detail = status === undefined ? `${name}: ${rootMessage(error)}` : `HTTP ${status} ${name}`;
    return new StoreError(
      "unavailable",
      `Cannot reach S3 at ${location}: ${detail} (check the endpoint URL and that the server is running)`,
      { cause: error },
    );
  }
  const http = status === undefined ? "" : `HTTP ${status} `;
  return new StoreError("failed", `S3 ${where.op} on ${target} failed: ${http}${name}: ${message}`, {
    cause: error,
  });
}

/** Connection refused or reset, DNS failure, timeout: the server was not reached or did not answer. */
function isNetworkError(error: unknown): boolean {
  const { name, message, code } = (error ?? {}) as { name?: string; message?: string; code?: string };
  return name === "TypeError" || name === "TimeoutError" ||
    /^E(CONN|TIMEDOUT|NOTFOUND|AI_AGAIN|HOSTUNREACH|NETUNREACH|PIPE)/.test(code ?? "") ||
    /fetch failed|error sending request|connect|network|socket|timed out|did not complete/i.test(
      message ?? "",
    );
}

function rootMessage(error: unknown): string {
  let e = error as Error | undefined;
  while (e?.cause instanceof Error) e = e.cause;
  return e?.message ?? String(error);
}

export function statusOf(error: unknown): number | undefined {
  return (error as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
}

/** A failure that may go away: S3 unreachable or not answering in time, 5xx, throttling. */
export function isTransient(error: unknown): boolean {
  if (error instanceof StoreError && error.kind === "unavailable") return true;
  let e = error;
  while (e instanceof Error && statusOf(e) === undefined && e.cause !== undefined) e = e.cause;
  const status = statusOf(e);
  return status !== undefined && (status >= 500 || status === 429);
}

export function isMissingKey(error: unknown): boolean {
  const name = (error as Error)?.name;
  return name === "NoSuchKey" || name === "NotFound" || (statusOf(error) === 404 && name !== "NoSuchBucket");
}

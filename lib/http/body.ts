/**
 * Watching a response body as it is sent (see lib/util/streams.ts): the request log and the per-client limiter
 * learn when it has ended, failed or been cancelled.
 *
 * @module
 */

import { type StreamWatch, watchStream } from "../util/streams.ts";

/** `response` with a body that reports to `watch`; `done(0)` at once when there is no body. */
export function watchBody(response: Response, watch: StreamWatch): Response {
  if (response.body === null) {
    watch.done(0);
    return response;
  }
  return new Response(watchStream(response.body, watch), {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
}

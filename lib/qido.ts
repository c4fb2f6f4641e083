/**
 * QIDO-RS search (PS3.18 10.6) over the catalog. TODO(#4): being written.
 *
 * @module
 */

import type { Router } from "./router.ts";
import type { Services } from "./services.ts";

/** Adds the QIDO-RS and catalog admin routes to `router`. */
export function registerQido(_router: Router, _services: Services): void {
}

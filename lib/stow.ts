/**
 * STOW-RS store (PS3.18 10.5). TODO(#5): being written.
 *
 * @module
 */

import type { Router } from "./router.ts";
import type { Services } from "./services.ts";

/** Adds the STOW-RS routes to `router`. */
export function registerStow(_router: Router, _services: Services): void {
}

/**
 * The Store Instances Response of STOW-RS (PS3.18 10.5.3, Annex I): what happened to each part, the
 * response's status, and its `Warning` headers.
 *
 * @module
 */

import { HttpError } from "../http/errors.ts";
import { warningHeader } from "./services.ts";

/** Failure Reason (0008,1197) values. */
export const FAILURE = {
  processing: 0x0110,
  /** Duplicate SOP Instance (PS3.7 C.5.x "0111"): a different object is stored under the SOP Instance UID. */
  conflict: 0x0111,
  outOfResources: 0xa700,
  cannotUnderstand: 0xc000,
} as const;

/** Warning Reason (0008,1196) of an instance that replaced a stored one (see the module notes). */
export const WARNING_REPLACED = 0x0111;

/** A part written and catalogued. */
export interface Stored {
  /** Always `true`: the part was written. */
  stored: true;
  /** The part's 1-based position. */
  index: number;
  /** SOP Class UID (0008,0016). */
  sopClass: string;
  /** SOP Instance UID (0008,0018). */
  sop: string;
  /** Study Instance UID (0020,000D). */
  study: string;
  /** Series Instance UID (0020,000E). */
  series: string;
  /** Whether it replaced a stored object under the same key (only with `overwrite`). */
  replaced: boolean;
  /** The same bytes were stored already: nothing was written (a retry, or a second copy). */
  duplicate?: boolean;
  /** Something to tell the client about it. */
  note?: string;
}

/** A part not written. */
export interface Failed {
  /** Always `false`: nothing was written for the part. */
  stored: false;
  /** The part's 1-based position. */
  index: number;
  /** SOP Class UID, when it could be read. */
  sopClass?: string;
  /** SOP Instance UID, when it could be read. */
  sop?: string;
  /** Study Instance UID, when it could be read. */
  study?: string;
  /** Failure Reason (0008,1197): one of {@linkcode FAILURE}. */
  reason: number;
  /** What was wrong, for people. */
  message: string;
}

/** What happened to one part. */
export type Outcome = Stored | Failed;

/** Where a STOW-RS request stored, and how its response is addressed. */
export interface StowTarget {
  aet: string;
  /** The study of the request URL, if any. */
  urlStudy?: string;
  /** The public base URL of the server (for RetrieveURLs). */
  base: string;
  contentType: string;
}

/**
 * The Store Instances Response (PS3.18 Annex I) of a request's outcomes, with its status (200, 202, 400, 409,
 * 413) and a `Warning` per problem. `abort` is why the request body was not read to its end, if it was not.
 */
export function storeResponse(results: Iterable<Outcome>, abort: unknown, target: StowTarget): Response {
  const { base, contentType } = target;
  const outcomes = [...results].sort((a, b) => a.index - b.index);
  const stored = outcomes.filter((o): o is Stored => o.stored);
  const failed = outcomes.filter((o): o is Failed => !o.stored);
  if (outcomes.length === 0) {
    if (abort instanceof HttpError) throw abort;
    if (abort !== undefined) throw new HttpError(400, (abort as Error).message, { cause: abort });
    throw new HttpError(
      400,
      "The STOW-RS request has no parts: send each instance as an application/dicom part",
    );
  }
  let status: number;
  if (abort instanceof HttpError && abort.status === 413) status = 413;
  else if (stored.length > 0) {
    status = failed.length > 0 || abort !== undefined || stored.some((o) => o.replaced || o.note) ? 202 : 200;
  } else if (failed.every((o) => o.reason === FAILURE.cannotUnderstand)) status = 400;
  else status = 409;
  const aet = encodeURIComponent(target.aet);
  const studies = new Set(stored.map((o) => o.study));
  const study = target.urlStudy ?? (studies.size === 1 ? [...studies][0] : undefined);
  const body: Record<string, unknown> = {
    "00081190": study === undefined
      ? { vr: "UR" }
      : { vr: "UR", Value: [`${base}/aets/${aet}/studies/${study}`] },
  };
  const warnings: string[] = [];
  const note = (text: string) => warnings.push(text);
  if (failed.length > 0) {
    body["00081198"] = {
      vr: "SQ",
      Value: failed.map((o) => {
        note(o.message);
        return {
          ...(o.sopClass ? { "00081150": { vr: "UI", Value: [o.sopClass] } } : {}),
          ...(o.sop ? { "00081155": { vr: "UI", Value: [o.sop] } } : {}),
          "00081197": { vr: "US", Value: [o.reason] },
        };
      }),
    };
  }
  if (stored.length > 0) {
    body["00081199"] = {
      vr: "SQ",
      Value: stored.map((o) => {
        if (o.replaced) {
          note(
            `Part ${o.index}: instance ${o.sop} replaced the stored instance with the same SOP Instance UID`,
          );
        }
        if (o.note) note(`Part ${o.index}: instance ${o.sop} ${o.note}`);
        return {
          "00081150": { vr: "UI", Value: [o.sopClass] },
          "00081155": { vr: "UI", Value: [o.sop] },
          "00081190": {
            vr: "UR",
            Value: [`${base}/aets/${aet}/studies/${o.study}/series/${o.series}/instances/${o.sop}`],
          },
          ...(o.replaced ? { "00081196": { vr: "US", Value: [WARNING_REPLACED] } } : {}),
        };
      }),
    };
  }
  const headers = new Headers({ "content-type": contentType });
  const host = new URL(base).host;
  if (abort !== undefined) warnings.unshift((abort as Error).message);
  // header values are bytes: whatever a file holds (UIDs in messages) goes out as printable ASCII only
  for (const text of warnings.slice(0, 20)) {
    headers.append("warning", warningHeader(host, text.replace(/[^\x20-\x7e]/g, "?")));
  }
  if (warnings.length > 20) {
    headers.append("warning", warningHeader(host, `${warnings.length - 20} more problems`));
  }
  return new Response(JSON.stringify(body) + "\n", { status, headers });
}

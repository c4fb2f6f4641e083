/**
 * C-FIND SCP (PS3.4 C.4.1) for Patient Root and Study Root at PATIENT, STUDY, SERIES and IMAGE level, answered
 * from the search catalog with QIDO-RS's matching (lib/dimse/query.ts). Each match is a pending response
 * (FF00) carrying the requested keys with the values found (empty when absent), the level's unique keys and
 * QueryRetrieveLevel; computed keys (ModalitiesInStudy, SOPClassesInStudy, the Number of ... Related ...
 * counts, InstanceAvailability, RetrieveAETitle) are filled in. PATIENT level groups the matching studies by
 * Patient ID. A C-CANCEL stops between matches (FE00). Rows are read from the catalog a page at a time.
 *
 * @module
 */

import type { SearchRow } from "../catalog/catalog.ts";
import type { DicomJson } from "../dicom/dicom_json.ts";
import { tagToHex } from "../dicom/dictionary.ts";
import { instanceKey } from "../dicom/uid.ts";
import type { Filter } from "../catalog/qido_query.ts";
import type { Association, Message } from "./association.ts";
import { readAllBounded } from "./association.ts";
import { CMD, STATUS } from "./command.ts";
import {
  elementFromJson,
  encodeIdentifier,
  type IdElement,
  needsUtf8,
  parseIdentifier,
} from "./identifier.ts";
import {
  CHARSET,
  IdentifierError,
  keysOf,
  levelOfIdentifier,
  type QrLevel,
  QUERY_LEVEL,
  searchOf,
  UNIQUE_KEYS,
} from "./query.ts";
import { replyTo, response, type ScpContext, type Session } from "./scp.ts";
import { QR_MODELS } from "./sop_classes.ts";

/** Rows asked of the catalog at a time. */
const PAGE = 500;
/** How long a search waits for the first crawl of an AET. */
const FIRST_CRAWL_WAIT_MS = 10_000;
/** Largest identifier accepted. */
export const MAX_IDENTIFIER_BYTES = 1024 * 1024;

/** Reads and parses a request's identifier in its context's transfer syntax. */
export async function identifierOf(message: Message): Promise<IdElement[]> {
  if (!message.dataset) throw new IdentifierError("The request has no identifier");
  const bytes = await readAllBounded(message.dataset, MAX_IDENTIFIER_BYTES);
  try {
    return parseIdentifier(bytes, message.context.transferSyntax);
  } catch (error) {
    throw new IdentifierError(`Cannot read the identifier: ${(error as Error).message}`);
  }
}

/** Study and series UIDs named by single values or lists in `filters` (for lazy instance indexing). */
export function scopesOf(filters: readonly Filter[]): { study?: string; series?: string }[] | undefined {
  const uids = (tag: number): string[] | undefined => {
    const m = filters.find((f) => f.path.length === 1 && f.path[0] === tag)?.matcher;
    if (m?.kind === "single") return [m.value];
    if (m?.kind === "list") return m.values;
    return undefined;
  };
  const studies = uids(0x0020000d);
  const series = uids(0x0020000e);
  if (!studies && !series) return undefined;
  const scopes: { study?: string; series?: string }[] = [];
  for (const study of studies ?? [undefined]) {
    for (const s of series ?? [undefined]) scopes.push({ study, series: s });
  }
  return scopes.length <= 200 ? scopes : undefined;
}

/** Answers a C-FIND-RQ. */
export async function handleFind(
  association: Association,
  message: Message,
  session: Session,
  context: ScpContext,
): Promise<void> {
  const { command, contextId, messageId, fail } = replyTo(association, message);
  const { catalog, crawler } = context.services;
  let elements: IdElement[];
  let level: QrLevel;
  try {
    elements = await identifierOf(message);
    level = levelOfIdentifier(elements, QR_MODELS.get(message.context.abstractSyntax)!.root);
  } catch (error) {
    if (error instanceof IdentifierError) return await fail(STATUS.identifierDoesNotMatch, error.message);
    throw error;
  }
  if (!catalog) return await fail(STATUS.unableToProcess, "Search is off: the server runs without a catalog");
  let query;
  try {
    query = searchOf(elements, level, PAGE);
  } catch (error) {
    if (error instanceof IdentifierError) return await fail(STATUS.identifierDoesNotMatch, error.message);
    throw error;
  }
  await crawler?.ready(session.aet, FIRST_CRAWL_WAIT_MS);
  if (level === "IMAGE" && crawler) {
    for (const scope of scopesOf(query.filters) ?? []) await crawler.ensureIndexed(session.aet, scope);
  }
  const keys = keysOf(elements);
  const send = (identifier: IdElement[]) => {
    const all = needsUtf8(identifier)
      ? [...identifier, { tag: CHARSET, vr: "CS", value: "ISO_IR 192" }]
      : identifier;
    return association.send(
      contextId,
      response(command, STATUS.pending, [[CMD.dataSetType, 0x0000]]),
      encodeIdentifier(all, message.context.transferSyntax),
    );
  };
  const cancelled = () => session.cancelled.has(messageId);
  try {
    const patients = new Map<string, PatientGroup>();
    for (let offset = 0;; offset += PAGE) {
      const rows = await catalog.search({
        aet: session.aet,
        level: query.level,
        filters: query.filters,
        limit: PAGE,
        offset,
      });
      for (const row of rows) {
        if (level === "PATIENT") {
          groupPatient(patients, row);
          continue;
        }
        if (cancelled()) return await association.send(contextId, response(command, STATUS.cancel));
        await send(answer(keys, row, level, session.aet));
      }
      if (rows.length < PAGE) break;
    }
    for (const group of patients.values()) {
      if (cancelled()) return await association.send(contextId, response(command, STATUS.cancel));
      await send(patientAnswer(keys, group, session.aet));
    }
    await association.send(contextId, response(command, STATUS.success));
  } finally {
    session.cancelled.delete(messageId);
  }
}

interface PatientGroup {
  json: DicomJson;
  studies: number;
  series: number;
  instances: number;
}

function groupPatient(patients: Map<string, PatientGroup>, row: SearchRow): void {
  const id = JSON.stringify([row.studyJson["00100020"]?.Value ?? [], row.studyJson["00100021"]?.Value ?? []]);
  const group = patients.get(id) ?? { json: row.studyJson, studies: 0, series: 0, instances: 0 };
  group.studies++;
  group.series += row.studySeries;
  group.instances += row.studyInstances;
  patients.set(id, group);
}

/** Values the server computes, per tag. */
function computed(tag: number, row: SearchRow, aet: string): IdElement | undefined {
  switch (tag) {
    case 0x00080054:
      return { tag, vr: "AE", value: aet };
    case 0x00080056:
      return { tag, vr: "CS", value: "ONLINE" };
    case 0x00080061:
      return { tag, vr: "CS", value: row.modalities.join("\\") };
    case 0x00080062:
      return { tag, vr: "UI", value: row.sopClasses.join("\\") };
    case 0x00201206:
      return { tag, vr: "IS", value: String(row.studySeries) };
    case 0x00201208:
      return { tag, vr: "IS", value: String(row.studyInstances) };
    case 0x00201209:
      return row.seriesInstances === undefined
        ? undefined
        : { tag, vr: "IS", value: String(row.seriesInstances) };
  }
  return undefined;
}

/** The response identifier of one match: the requested keys, the unique keys down to `level`, the level. */
export function answer(keys: readonly IdElement[], row: SearchRow, level: QrLevel, aet: string): IdElement[] {
  const json: DicomJson = { ...row.studyJson, ...row.seriesJson, ...row.instanceJson };
  const out = new Map<number, IdElement>();
  for (const key of keys) {
    out.set(
      key.tag,
      computed(key.tag, row, aet) ?? elementFromJson(key.tag, key.vr, json[tagToHex(key.tag)]),
    );
  }
  const unique: [number, string | undefined][] = [[UNIQUE_KEYS.STUDY, row.study]];
  if (level === "SERIES" || level === "IMAGE") unique.push([UNIQUE_KEYS.SERIES, row.series]);
  if (level === "IMAGE") unique.push([UNIQUE_KEYS.IMAGE, row.sop]);
  for (const [tag, value] of unique) {
    if (value !== undefined && !out.get(tag)?.value) out.set(tag, { tag, vr: "UI", value });
  }
  out.set(QUERY_LEVEL, { tag: QUERY_LEVEL, vr: "CS", value: level });
  return [...out.values()];
}

function patientAnswer(keys: readonly IdElement[], group: PatientGroup, aet: string): IdElement[] {
  const out = new Map<number, IdElement>();
  const counts: Record<number, number> = {
    0x00201200: group.studies,
    0x00201202: group.series,
    0x00201204: group.instances,
  };
  for (const key of keys) {
    if (key.tag in counts) out.set(key.tag, { tag: key.tag, vr: "IS", value: String(counts[key.tag]) });
    else if (key.tag === 0x00080054) out.set(key.tag, { tag: key.tag, vr: "AE", value: aet });
    else if (key.tag >>> 16 === 0x0010 || key.tag >>> 16 === 0x0012) {
      out.set(key.tag, elementFromJson(key.tag, key.vr, group.json[tagToHex(key.tag)]));
    } else out.set(key.tag, { tag: key.tag, vr: key.vr, value: "" });
  }
  if (!out.get(UNIQUE_KEYS.PATIENT)?.value) {
    out.set(UNIQUE_KEYS.PATIENT, elementFromJson(UNIQUE_KEYS.PATIENT, "LO", group.json["00100020"]));
  }
  out.set(QUERY_LEVEL, { tag: QUERY_LEVEL, vr: "CS", value: "PATIENT" });
  return [...out.values()];
}

/** The object key of a search row at instance level. */
export function keyOfRow(row: SearchRow): string {
  return instanceKey(row.study, row.series!, row.sop!);
}

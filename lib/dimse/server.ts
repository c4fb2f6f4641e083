/**
 * The DIMSE listener: {@linkcode startDimse} accepts TCP (or DICOM TLS) connections on `DIMSE_PORT`, reads
 * each A-ASSOCIATE-RQ within the ARTIM timeout, rejects it when the association cap is reached (transient,
 * "local limit exceeded") or negotiation refuses it, and otherwise runs the association until it is released
 * or aborted. A malformed PDU aborts its association only; nothing a peer sends can stop the listener.
 *
 * @module
 */

import type { Services } from "../dicomweb/services.ts";
import { Ingest } from "../dicomweb/stow.ts";
import { loadTls } from "../security/proxies.ts";
import { Association, type Connection, noDelay, PduReader, writeAll } from "./association.ts";
import type { DimseSettings } from "./dimse_settings.ts";
import { encodeAbort, encodeAssociateAc, encodeAssociateRj, parsePdu } from "./pdu.ts";
import { handleRequest, negotiate, principalOf, type ScpContext, type Session } from "./scp.ts";

/** A running DIMSE service. */
export interface DimseServer {
  /** The port listened on (useful with `port: 0`). */
  port: number;
  /** Associations open now. */
  readonly associations: number;
  /** Stops listening, aborts the associations, and waits for them to end. */
  close(): Promise<void>;
}

/** Options of {@linkcode startDimse}. */
export interface DimseOptions {
  /** Where association problems are reported (default `services.log`, else none). */
  log?: (line: string) => void;
  /** The ingest shared with STOW-RS (default: one of its own over `services`). */
  ingest?: Ingest;
}

/**
 * Starts the DIMSE service over `services` (the same store, AETs, catalog and grants as the HTTP server).
 *
 * @example
 * ```ts ignore
 * const dimse = await startDimse(services, settings);
 * console.log(`DIMSE on port ${dimse.port}`);
 * await dimse.close();
 * ```
 */
export async function startDimse(
  services: Services,
  settings: DimseSettings,
  options: DimseOptions = {},
): Promise<DimseServer> {
  const log = options.log ?? services.log ?? (() => {});
  const context: ScpContext = {
    services,
    settings,
    ingest: options.ingest ?? new Ingest(services),
    log,
  };
  const listener: Deno.Listener = settings.tls
    ? Deno.listenTls({ hostname: settings.hostname, port: settings.port, ...await loadTls(settings.tls) })
    : Deno.listen({ hostname: settings.hostname, port: settings.port });
  const port = (listener.addr as Deno.NetAddr).port;
  const open = new Set<{ conn: Connection; association?: Association }>();
  const running = new Set<Promise<void>>();
  let closing = false;

  const accept = async () => {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (error) {
        if (closing) return;
        log(`dimse: accept failed: ${(error as Error).message}`);
        continue;
      }
      noDelay(conn);
      const entry: { conn: Connection; association?: Association } = { conn };
      open.add(entry);
      const run = serve(conn, entry, open.size, context).catch((error) => {
        log(`dimse: connection from ${peerOf(conn)} ended: ${(error as Error).message}`);
      }).finally(() => {
        open.delete(entry);
        running.delete(run);
        try {
          conn.close();
        } catch {
          // closed already
        }
      });
      running.add(run);
    }
  };
  const accepting = accept();

  return {
    port,
    get associations() {
      return open.size;
    },
    async close() {
      closing = true;
      listener.close();
      await accepting;
      for (const entry of open) {
        if (entry.association) entry.association.abort("the server is shutting down");
        else {
          try {
            entry.conn.close();
          } catch {
            // closed already
          }
        }
      }
      await Promise.allSettled([...running]);
    },
  };
}

function peerOf(conn: Deno.Conn): string {
  const addr = conn.remoteAddr as Deno.NetAddr;
  return `${addr.hostname}:${addr.port}`;
}

/** One connection: negotiation within ARTIM, then the association. */
async function serve(
  conn: Deno.Conn,
  entry: { conn: Connection; association?: Association },
  openCount: number,
  context: ScpContext,
): Promise<void> {
  const { settings, log } = context;
  const reader = new PduReader(conn);
  const artim = setTimeout(() => {
    log(`dimse: ${peerOf(conn)} sent no A-ASSOCIATE-RQ within ${settings.artimMs} ms`);
    try {
      conn.close();
    } catch {
      // closed already
    }
  }, settings.artimMs);
  let bytes: Uint8Array | null;
  let pdu;
  try {
    bytes = await reader.next(1024 * 1024);
    if (bytes === null) return;
    pdu = parsePdu(bytes);
  } catch (error) {
    await writeAll(conn, encodeAbort(2, 0)).catch(() => {});
    throw error;
  } finally {
    clearTimeout(artim);
  }
  if (pdu.type !== "associate-rq") {
    await writeAll(conn, encodeAbort(2, 1)).catch(() => {});
    throw new Error(`expected A-ASSOCIATE-RQ, received ${pdu.type}`);
  }
  const reject = async (result: number, source: number, reason: number, why: string) => {
    log(`dimse: association from ${pdu.callingAe} to ${pdu.calledAe} (${peerOf(conn)}) rejected: ${why}`);
    await writeAll(conn, encodeAssociateRj(result, source, reason)).catch(() => {});
  };
  if (openCount > settings.maxAssociations) {
    return await reject(2, 3, 2, `${settings.maxAssociations} associations open (DIMSE_MAX_ASSOCIATIONS)`);
  }
  const negotiation = await negotiate(pdu, context);
  if (negotiation.rejection) {
    const { result, source, reason, why } = negotiation.rejection;
    return await reject(result, source, reason, why);
  }
  await writeAll(
    conn,
    encodeAssociateAc({
      calledAe: pdu.calledAe,
      callingAe: pdu.callingAe,
      applicationContext: pdu.applicationContext,
      contexts: negotiation.contexts,
      user: negotiation.user,
    }),
  );
  const association = new Association(conn, reader, {
    contexts: negotiation.accepted,
    peer: pdu.callingAe,
    limits: {
      maxReceivePdu: settings.maxPdu + 6,
      peerMaxLength: pdu.user.maxLength,
      maxSendPdu: settings.maxPdu,
      idleMs: settings.idleMs,
      maxMessageBytes: 1024 * 1024,
    },
  });
  entry.association = association;
  const session: Session = {
    aet: pdu.calledAe,
    callingAe: pdu.callingAe,
    principal: principalOf(pdu.callingAe, context.services.config.auth),
    roles: negotiation.roles,
    cancelled: new Set(),
  };
  association.onRequest = (message) => handleRequest(association, message, session, context);
  association.onCancel = (id) => session.cancelled.add(id);
  association.onClose = (reason) => {
    if (reason !== "released") log(`dimse: association from ${pdu.callingAe} to ${pdu.calledAe} ${reason}`);
  };
  await association.run();
}

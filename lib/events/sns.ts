/**
 * Amazon SNS HTTP(S) deliveries (how AWS S3 event notifications reach an HTTP endpoint): the message types,
 * the string SNS signs, and {@linkcode SnsVerifier}, which checks a message's signature against the signing
 * certificate before anything in it is believed.
 *
 * The check, as SNS documents it: the certificate URL must be `https://sns.<region>.amazonaws.com/…` (nothing
 * else is fetched); the string to sign is `Name\nValue\n` for the message's fields in a fixed order (with
 * `Subject` only when present, and `SubscribeURL` and `Token` for (un)subscription confirmations); the
 * signature is RSASSA-PKCS1-v1_5 with SHA-1 (`SignatureVersion` 1) or SHA-256 (2), checked with WebCrypto
 * against the certificate's public key. Certificates are cached by URL.
 *
 * @module
 */

import { X509Certificate } from "node:crypto";
import { DomainError } from "../util/errors.ts";

/** An SNS message as delivered (the fields this module reads). */
export interface SnsMessage {
  /** `Notification`, `SubscriptionConfirmation` or `UnsubscribeConfirmation`. */
  Type: string;
  /** Unique per message. */
  MessageId: string;
  /** The topic. */
  TopicArn: string;
  /** The payload (for S3: the event notification JSON as a string). */
  Message: string;
  /** When SNS sent it. */
  Timestamp: string;
  /** Notifications: the subject, when the publisher gave one. */
  Subject?: string;
  /** Confirmations: the URL to GET to confirm. */
  SubscribeURL?: string;
  /** Confirmations: the token. */
  Token?: string;
  /** `1` (SHA-1) or `2` (SHA-256). */
  SignatureVersion: string;
  /** Base64. */
  Signature: string;
  /** Where the signing certificate is. */
  SigningCertURL: string;
}

/** The message's signature does not check (or it cannot be checked): it is refused (403). */
export class SnsSignatureError extends DomainError {}

/** Whether `body` looks like an SNS delivery (its type and signature fields are there). */
export function isSnsMessage(body: unknown): body is SnsMessage {
  if (typeof body !== "object" || body === null) return false;
  const b = body as Record<string, unknown>;
  return typeof b.Type === "string" && typeof b.SignatureVersion === "string" &&
    typeof b.Signature === "string";
}

/** The string SNS signs for `message` (see the module doc). */
export function snsStringToSign(message: SnsMessage): string {
  const fields = message.Type === "Notification"
    ? [
      "Message",
      "MessageId",
      ...(message.Subject !== undefined ? ["Subject"] : []),
      "Timestamp",
      "TopicArn",
      "Type",
    ]
    : ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"];
  let out = "";
  for (const name of fields) {
    const value = (message as unknown as Record<string, unknown>)[name];
    if (typeof value !== "string") {
      throw new SnsSignatureError(`The SNS ${message.Type} message has no ${name}: it cannot be verified`);
    }
    out += `${name}\n${value}\n`;
  }
  return out;
}

/** The signing certificate's URL, when it is one SNS uses (`https://sns.<region>.amazonaws.com/…`). */
export function checkSigningCertUrl(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new SnsSignatureError(`SigningCertURL ${JSON.stringify(text)} is not a URL`);
  }
  if (
    url.protocol !== "https:" || url.port !== "" || url.username !== "" || url.password !== "" ||
    !/^sns\.[a-z0-9-]+\.amazonaws\.com$/.test(url.hostname)
  ) {
    throw new SnsSignatureError(
      `SigningCertURL ${
        JSON.stringify(text)
      } is not on https://sns.<region>.amazonaws.com/: not fetched, refused`,
    );
  }
  return url;
}

/** Options for {@linkcode SnsVerifier}. */
export interface SnsVerifierOptions {
  /** Fetches a certificate (PEM) from a checked URL (default: `fetch`, 10 s). */
  fetchCertificate?: (url: URL) => Promise<string>;
  /** Certificates kept (default 16). */
  cacheSize?: number;
}

/** Checks SNS message signatures (see the module doc). */
export class SnsVerifier {
  readonly #fetch: (url: URL) => Promise<string>;
  readonly #keys = new Map<string, Promise<Uint8Array<ArrayBuffer>>>();
  readonly #cacheSize: number;

  /** A verifier fetching certificates with `options.fetchCertificate`. */
  constructor(options: SnsVerifierOptions = {}) {
    this.#cacheSize = options.cacheSize ?? 16;
    this.#fetch = options.fetchCertificate ?? (async (url) => {
      const response = await fetch(url, { signal: AbortSignal.timeout(10_000) });
      if (!response.ok) {
        await response.body?.cancel();
        throw new SnsSignatureError(`The SNS signing certificate ${url} answered ${response.status}`);
      }
      return await response.text();
    });
  }

  /** The certificate's public key (SubjectPublicKeyInfo, DER), fetched once per URL. */
  #publicKey(url: URL): Promise<Uint8Array<ArrayBuffer>> {
    let key = this.#keys.get(url.href);
    if (key === undefined) {
      key = this.#fetch(url).then((pem) => {
        let certificate: X509Certificate;
        try {
          certificate = new X509Certificate(pem);
        } catch (error) {
          throw new SnsSignatureError(`${url} is not an X.509 certificate: ${(error as Error).message}`);
        }
        const der = certificate.publicKey.export({ type: "spki", format: "der" });
        return new Uint8Array(der);
      });
      key.catch(() => this.#keys.delete(url.href));
      if (this.#keys.size >= this.#cacheSize) this.#keys.delete(this.#keys.keys().next().value!);
      this.#keys.set(url.href, key);
    }
    return key;
  }

  /** Resolves when `message` is signed by SNS; rejects with a {@linkcode SnsSignatureError} saying why not. */
  async verify(message: SnsMessage): Promise<void> {
    const hash = message.SignatureVersion === "1"
      ? "SHA-1"
      : message.SignatureVersion === "2"
      ? "SHA-256"
      : undefined;
    if (hash === undefined) {
      throw new SnsSignatureError(
        `SignatureVersion ${JSON.stringify(message.SignatureVersion)} is not 1 or 2`,
      );
    }
    const url = checkSigningCertUrl(message.SigningCertURL);
    const data = new TextEncoder().encode(snsStringToSign(message));
    let signature: Uint8Array<ArrayBuffer>;
    try {
      signature = Uint8Array.from(atob(message.Signature), (c) => c.charCodeAt(0));
    } catch {
      throw new SnsSignatureError("The SNS Signature is not base64");
    }
    const spki = await this.#publicKey(url);
    const key = await crypto.subtle.importKey("spki", spki, { name: "RSASSA-PKCS1-v1_5", hash }, false, [
      "verify",
    ]).catch((error) => {
      throw new SnsSignatureError(`The SNS signing certificate ${url} has no RSA key: ${error.message}`);
    });
    if (!await crypto.subtle.verify("RSASSA-PKCS1-v1_5", key, signature, data)) {
      throw new SnsSignatureError(
        `The SNS ${message.Type} message ${message.MessageId} does not carry a valid signature: refused`,
      );
    }
  }
}

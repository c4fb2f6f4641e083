/**
 * Where a bucket's requests go: the endpoint, path- or virtual-host style and signing region the AWS SDK
 * resolves for a bucket, so ranged GETs and PUTs can be signed and sent without the SDK's per-request cost.
 *
 * @module
 */

import { S3Client } from "@aws-sdk/client-s3";
import { type SigningCredentials, SigV4Signer } from "./sigv4.ts";

/** Where one bucket's GETs and PUTs go and how they are signed. */
export interface Route {
  /** The bucket's URL (path style: ends with the bucket; virtual host: the root). */
  base: URL;
  region: string;
  service: string;
  /** The SDK's signer (kept for comparison in tests). */
  signer: RequestSigner;
  /** Signs what the store sends itself (see sigv4.ts). */
  sigv4: SigV4Signer;
  /** The client's credentials (its chain, memoized and refreshed by the SDK). */
  credentials(): Promise<SigningCredentials>;
  clockOffset(): number;
}

export interface RequestSigner {
  sign(
    request: {
      method: string;
      protocol: string;
      hostname: string;
      port?: number;
      path: string;
      query: Record<string, string>;
      headers: Record<string, string>;
    },
    options: { signingRegion: string; signingService: string; signingDate: Date },
  ): Promise<{ headers: Record<string, string> }>;
}

export type Maybe<T> = T | undefined | (() => Promise<T | undefined>);

/** The resolved client settings that decide an endpoint (what the SDK's endpoint middleware reads). */
export interface EndpointConfig {
  endpoint?: () => Promise<{ protocol: string; hostname: string; port?: number; path: string }>;
  region: Maybe<string>;
  useFipsEndpoint: Maybe<boolean>;
  useDualstackEndpoint: Maybe<boolean>;
  forcePathStyle?: Maybe<boolean>;
  useAccelerateEndpoint?: Maybe<boolean>;
  useGlobalEndpoint?: Maybe<boolean>;
  disableMultiregionAccessPoints?: Maybe<boolean>;
  useArnRegion?: Maybe<boolean>;
  disableS3ExpressSessionAuth?: Maybe<boolean>;
  systemClockOffset?: number;
  endpointProvider(params: Record<string, unknown>): {
    url: URL;
    properties?: { authSchemes?: { name: string; signingName?: string; signingRegion?: string }[] };
  };
  signer(authScheme?: unknown): Promise<RequestSigner>;
  credentials(): Promise<SigningCredentials>;
}

/** Resolves `bucket`'s endpoint exactly as the SDK does for GetObject; `null` unless plain SigV4 signs it. */
export async function resolveRoute(client: S3Client, bucket: string): Promise<Route | null> {
  const config = client.config as unknown as EndpointConfig;
  const value = async <T>(v: Maybe<T>) => typeof v === "function" ? await (v as () => Promise<T>)() : v;
  const endpoint = await config.endpoint?.();
  const resolved = config.endpointProvider({
    Bucket: bucket,
    Region: await value(config.region),
    UseFIPS: await value(config.useFipsEndpoint),
    UseDualStack: await value(config.useDualstackEndpoint),
    ForcePathStyle: await value(config.forcePathStyle),
    Accelerate: await value(config.useAccelerateEndpoint),
    UseGlobalEndpoint: await value(config.useGlobalEndpoint),
    DisableMultiRegionAccessPoints: await value(config.disableMultiregionAccessPoints),
    UseArnRegion: await value(config.useArnRegion),
    DisableS3ExpressSessionAuth: await value(config.disableS3ExpressSessionAuth),
    Endpoint: endpoint &&
      `${endpoint.protocol}//${endpoint.hostname}${endpoint.port ? `:${endpoint.port}` : ""}${endpoint.path}`,
  });
  const scheme = resolved.properties?.authSchemes?.[0];
  if (scheme?.name !== "sigv4" || !scheme.signingRegion || resolved.url.search !== "") return null;
  return {
    base: new URL(resolved.url.href),
    region: scheme.signingRegion,
    service: scheme.signingName ?? "s3",
    signer: await config.signer(scheme),
    sigv4: new SigV4Signer(scheme.signingRegion, scheme.signingName ?? "s3"),
    credentials: () => config.credentials(),
    clockOffset: () => config.systemClockOffset ?? 0,
  };
}

const UNRESERVED = /^[A-Za-z0-9._~-]*$/;

/** A key segment as S3 expects it in the path (RFC 3986 unreserved characters stay as they are). */
export function escapeSegment(segment: string): string {
  if (UNRESERVED.test(segment)) return segment; // UIDs and most keys: nothing to escape
  return encodeURIComponent(segment).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/**
 * Test certificates: a CA and a certificate for `localhost` / 127.0.0.1 that it signs, made with `openssl`.
 *
 * @module
 */

/**
 * Writes `ca.pem`, `cert.pem` and `key.pem` into `dir`; `false` when `openssl` is not available.
 */
export async function makeTestCertificates(dir: string): Promise<boolean> {
  // A CA and a server certificate it signs (rustls refuses a self-signed certificate as its own CA).
  const openssl = async (...args: string[]) =>
    (await new Deno.Command("openssl", { args, stdout: "null", stderr: "null" }).output().catch(() =>
      undefined
    ))?.success ??
      false;
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await Deno.writeTextFile(
    `${dir}/ext.cnf`,
    "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
  );
  const made = await openssl(
    "req",
    "-x509",
    ...ec,
    "-days",
    "1",
    "-subj",
    "/CN=test CA",
    "-keyout",
    `${dir}/ca.key`,
    "-out",
    `${dir}/ca.pem`,
  ) &&
    await openssl(
      "req",
      ...ec,
      "-subj",
      "/CN=localhost",
      "-keyout",
      `${dir}/key.pem`,
      "-out",
      `${dir}/server.csr`,
    ) &&
    await openssl(
      "x509",
      "-req",
      "-in",
      `${dir}/server.csr`,
      "-CA",
      `${dir}/ca.pem`,
      "-CAkey",
      `${dir}/ca.key`,
      "-CAcreateserial",
      "-days",
      "1",
      "-extfile",
      `${dir}/ext.cnf`,
      "-out",
      `${dir}/cert.pem`,
    );
  return made;
}

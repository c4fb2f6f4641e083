const endpoint = "http://127.0.0.1:7510";
const port = 18557;
const flags = Deno.args[0] ? [`--v8-flags=${Deno.args[0]}`] : [];
const child = new Deno.Command(Deno.execPath(), { args: ["run", "-P=bench-server", ...flags, "tests/stow_bench.ts", "--serve"], env: { S3_ENDPOINT: endpoint, AETS: "BENCH=dbg", AWS_ACCESS_KEY_ID: "S3RVER", AWS_SECRET_ACCESS_KEY: "S3RVER", PORT: String(port), HOSTNAME: "127.0.0.1" }, stdout: "null", stderr: "null" }).spawn();
for (let i = 0; i < 200; i++) { try { const r = await fetch(`http://127.0.0.1:${port}/healthz`); await r.body?.cancel(); break; } catch { await new Promise((r) => setTimeout(r, 50)); } }
const dir = "bench-data/bench";
const files: Uint8Array[] = [];
for await (const e of Deno.readDir(dir)) if (e.isDirectory) for await (const s of Deno.readDir(`${dir}/${e.name}`)) for await (const f of Deno.readDir(`${dir}/${e.name}/${s.name}`)) files.push(await Deno.readFile(`${dir}/${e.name}/${s.name}/${f.name}`));
const enc = new TextEncoder();
const mem = async () => { const t = new TextDecoder().decode((await new Deno.Command("cat", { args: [`/proc/${child.pid}/status`] }).output()).stdout); return `rss ${Number(/VmRSS:\s+(\d+)/.exec(t)![1]) >> 10} hwm ${Number(/VmHWM:\s+(\d+)/.exec(t)![1]) >> 10}`; };
async function stow(fs: Uint8Array[]) {
  const b = `b-${crypto.randomUUID()}`;
  const blob = new Blob([...fs.flatMap((f) => [enc.encode(`--${b}\r\nContent-Type: application/dicom\r\n\r\n`), f, enc.encode("\r\n")]), enc.encode(`--${b}--\r\n`)] as BlobPart[]);
  const t0 = performance.now();
  const r = await fetch(`http://127.0.0.1:${port}/aets/BENCH/studies`, { method: "POST", body: blob, headers: { "content-type": `multipart/related; type="application/dicom"; boundary=${b}` } });
  await r.json();
  return performance.now() - t0;
}
console.log("idle", await mem());
console.log("1 request", (await stow(files)).toFixed(0), "ms", await mem());
console.log("1 request", (await stow(files)).toFixed(0), "ms", await mem());
const slices = Array.from({ length: 8 }, (_, k) => files.filter((_, i) => i % 8 === k));
await Promise.all(slices.map(stow)); console.log("8 requests", await mem());
await Promise.all([0, 1, 2, 3].map(() => stow(files))); console.log("4 clients", await mem());
child.kill(); await child.status;

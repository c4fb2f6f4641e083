const dir = "bench-data/bench";
const n = Number(Deno.args[0] ?? 300);
const paths: string[] = [];
for await (const e of Deno.readDir(dir)) if (e.isDirectory) for await (const s of Deno.readDir(`${dir}/${e.name}`)) for await (const f of Deno.readDir(`${dir}/${e.name}/${s.name}`)) paths.push(`${dir}/${e.name}/${s.name}/${f.name}`);
const out = await Deno.open("/tmp/stow_body.bin", { write: true, create: true, truncate: true });
const enc = new TextEncoder();
for (const p of paths.slice(0, n)) { await out.write(enc.encode(`--bb\r\nContent-Type: application/dicom\r\n\r\n`)); await out.write(await Deno.readFile(p)); await out.write(enc.encode("\r\n")); }
await out.write(enc.encode("--bb--\r\n")); out.close();

/**
 * The layer map of `lib/`, written once: which folder may import which. The test reads every module's
 * imports (static, dynamic and `new URL(..., import.meta.url)` worker entries) and fails on an import that
 * points the wrong way, on a folder missing from the map, and on a layer folder without its module doc.
 *
 * @module
 */
import assert from "node:assert/strict";

/**
 * Each layer of `lib/` and the layers it may import, lowest first: a layer imports only layers listed before
 * it, so there is no cycle. `util` is below everything. Each layer folder's README.md repeats its line (checked
 * below), next to what the folder holds.
 */
export const LAYERS: Record<string, readonly string[]> = {
  util: [],
  dicom: ["util"],
  codecs: ["util", "dicom"],
  store: ["util"],
  objects: ["util", "dicom", "store"],
  imaging: ["util", "dicom", "codecs", "objects"],
  catalog: ["util", "dicom", "store", "objects"],
  http: ["util", "store"],
  security: ["util", "store", "http"],
  config: ["util", "http", "security"],
  dicomweb: ["util", "dicom", "codecs", "store", "objects", "imaging", "catalog", "http", "config"],
  viewer: ["util", "store", "http", "dicomweb"],
  dimse: ["util", "dicom", "store", "objects", "catalog", "security", "config", "dicomweb"],
  events: ["util", "dicom", "store", "objects", "catalog", "http", "config", "dicomweb"],
  app: [
    "util",
    "store",
    "objects",
    "imaging",
    "catalog",
    "http",
    "security",
    "config",
    "dicomweb",
    "viewer",
    "dimse",
    "events",
  ],
  cli: ["util", "dicom", "store", "objects", "catalog", "security", "config", "dicomweb", "app"],
};

/**
 * Modules private to their layer: only modules of the same layer import them (checked below), and they are
 * left out of `deno doc --lint` (their exports are the layer's plumbing, documented where they are used).
 */
export const LAYER_PRIVATE: readonly string[] = [
  "catalog/sql_filter.ts",
  "catalog/sqlite_schema.ts",
  "dicom/part10_bytes.ts",
  "dicom/part10_parser.ts",
  "dicomweb/stow_job.ts",
  "dicomweb/stow_part.ts",
  "dicomweb/stow_response.ts",
  "imaging/worker.ts",
  "store/s3/http1.ts",
  "store/s3/s3_errors.ts",
  "store/s3/s3_parts.ts",
  "store/s3/s3_routing.ts",
  "store/s3/s3_xml.ts",
];

const LIB = new URL("../lib/", import.meta.url);

/** Every `.ts` file under `lib/`, as paths relative to it (`dicom/part10.ts`). */
async function libFiles(dir = LIB, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isDirectory) {
      out.push(...await libFiles(new URL(`${entry.name}/`, dir), `${prefix}${entry.name}/`));
    } else if (entry.name.endsWith(".ts")) out.push(prefix + entry.name);
  }
  return out.sort();
}

/** Relative module specifiers a file imports: `from "…"`, `import("…")`, `new URL("…", import.meta.url)`. */
export function importsOf(source: string): string[] {
  const out: string[] = [];
  const code = source.replace(/^\s*\*.*$/gm, "").replace(/\/\/.*$/gm, ""); // not the examples in doc comments
  for (const match of code.matchAll(/(?:from\s+|import\s*\(\s*|new URL\(\s*)["'](\.{1,2}\/[^"']+)["']/g)) {
    out.push(match[1]);
  }
  return out;
}

/** The layer of a path relative to `lib/`, or undefined for a file directly in `lib/`. */
function layerOf(path: string): string | undefined {
  const slash = path.indexOf("/");
  return slash < 0 ? undefined : path.slice(0, slash);
}

Deno.test("lib/ layers import only the layers below them", async (t) => {
  const files = await libFiles();

  await t.step("every file is in a layer folder listed in LAYERS", () => {
    const strays = files.filter((file) => !(layerOf(file)! in LAYERS));
    assert.deepEqual(strays, [], "add the folder to LAYERS in tests/architecture_test.ts, or move the file");
  });

  await t.step("every module starts with its @module doc", async () => {
    const missing: string[] = [];
    for (const file of files) {
      const text = await Deno.readTextFile(new URL(file, LIB));
      if (!/^\/\*\*[\s\S]*?@module[\s\S]*?\*\//.test(text)) missing.push(file);
    }
    assert.deepEqual(missing, []);
  });

  await t.step("no import points up or sideways into a layer not allowed", async () => {
    const wrong: string[] = [];
    for (const file of files) {
      const from = layerOf(file)!;
      const text = await Deno.readTextFile(new URL(file, LIB));
      for (const specifier of importsOf(text)) {
        const target = new URL(specifier, new URL(file, LIB));
        if (!target.href.startsWith(LIB.href)) {
          wrong.push(`${file} imports ${specifier}, outside lib/`);
          continue;
        }
        const to = layerOf(target.href.slice(LIB.href.length));
        if (to === undefined || to === from) continue;
        if (!LAYERS[from]?.includes(to)) wrong.push(`lib/${file} (${from}) imports ${specifier} (${to})`);
      }
    }
    assert.deepEqual(wrong, []);
  });

  await t.step(
    "each layer folder has a README.md whose 'May import' line is the layer's entry here",
    async () => {
      const wrong: string[] = [];
      for (const [layer, allowed] of Object.entries(LAYERS)) {
        let text = "";
        try {
          text = await Deno.readTextFile(new URL(`${layer}/README.md`, LIB));
        } catch {
          wrong.push(`lib/${layer}/README.md is missing`);
          continue;
        }
        const line = /^May import: ([\s\S]*?)\n\n/m.exec(text)?.[1].replace(/\s+/g, " ");
        const listed = line === undefined || line === "nothing"
          ? []
          : line.split(", ").map((s) => s.replaceAll("`", ""));
        if (line === undefined || listed.join() !== allowed.join()) {
          wrong.push(
            `lib/${layer}/README.md says "May import: ${line}", LAYERS says ${
              allowed.join(", ") || "nothing"
            }`,
          );
        }
      }
      assert.deepEqual(wrong, []);
    },
  );

  await t.step("layer-private modules are imported only from their own layer", async () => {
    const wrong: string[] = [];
    for (const file of files) {
      const text = await Deno.readTextFile(new URL(file, LIB));
      for (const specifier of importsOf(text)) {
        const target = new URL(specifier, new URL(file, LIB)).href.slice(LIB.href.length);
        if (LAYER_PRIVATE.includes(target) && layerOf(target) !== layerOf(file)) {
          wrong.push(`lib/${file} imports lib/${target}, private to ${layerOf(target)}`);
        }
      }
    }
    assert.deepEqual(wrong, []);
    assert.deepEqual(
      LAYER_PRIVATE.filter((file) => !files.includes(file)),
      [],
      "LAYER_PRIVATE names files that exist",
    );
  });

  await t.step("deno doc --lint finds nothing in what the layers export", async () => {
    const modules = files.filter((file) => !LAYER_PRIVATE.includes(file)).map((file) => `lib/${file}`);
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["doc", "--lint", ...modules],
      cwd: new URL("..", LIB).pathname,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(output.stderr);
    assert.equal(output.code, 0, text.slice(-3000));
  });

  await t.step("the map itself has no cycle: each layer imports only layers listed before it", () => {
    const names = Object.keys(LAYERS);
    for (const [index, name] of names.entries()) {
      for (const below of LAYERS[name]) {
        assert.ok(names.indexOf(below) >= 0 && names.indexOf(below) < index, `${name} may import ${below}`);
      }
    }
  });

  await t.step("importsOf() sees static, dynamic and worker imports", () => {
    assert.deepEqual(
      importsOf(
        `import { a } from "./a.ts";\nexport type { B } from '../b/b.ts';\nawait import("./c.ts");\n` +
          `new Worker(new URL("./w.ts", import.meta.url));\n/**\n * import { d } from "./d.ts";\n */`,
      ),
      ["./a.ts", "../b/b.ts", "./c.ts", "./w.ts"],
    );
  });
});

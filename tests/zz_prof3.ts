const { DatabaseSync } = await import("node:sqlite");
const db = new DatabaseSync(":memory:");
db.exec("create table t(id integer primary key, d text, json text); create index t_d on t(d desc)");
let calls = 0;
db.function("f", { deterministic: true }, (a, b) => { calls++; return JSON.parse(a as string) ? 1 : 0; });
db.function("g", { deterministic: true }, (a, b) => { calls++; return 1; });
const ins = db.prepare("insert into t(d, json) values(?, ?)");
db.exec("begin");
for (let i = 0; i < 10000; i++) ins.run(String(20000000 + i), JSON.stringify({ "00081030": { vr: "LO", Value: [`STUDY ${i}`] }, "00100010": { vr: "PN", Value: [{ Alphabetic: "DOE^JOHN" }] }, "00100020": { vr: "LO", Value: [`PID${i}`] } }));
db.exec("commit");
for (const sql of ["select id, json from t where instr(json, 'STUDY 12') > 0 order by d desc limit 101",
  "select id, json from t where (instr(json, 'STUDY 12') > 0 and f(json, 'x')) order by d desc limit 101",
  "select id, json from t where f(json, 'x') order by d desc limit 101",
  "select id, json from t where g(json, 'x') order by d desc limit 101",
  "select id, json from t where g(json, 'x') order by d desc limit 10000"]) {
  calls = 0;
  const st = db.prepare(sql);
  const t0 = performance.now();
  for (let i = 0; i < 20; i++) st.all();
  console.log(((performance.now() - t0) / 20).toFixed(2), "ms", calls / 20, sql);
}
for (const sql of ["select count(*) from t", "select count(*) from t where instr(json, 'STUDY 12') > 0", "select count(*) from t where json like '%STUDY 12%'", "select count(*) from t where g(json, 'x')"]) {
  calls = 0;
  const st = db.prepare(sql);
  const t0 = performance.now();
  for (let i = 0; i < 20; i++) st.all();
  console.log(((performance.now() - t0) / 20).toFixed(2), "ms", calls / 20, sql);
}

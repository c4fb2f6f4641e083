const { DatabaseSync } = await import("node:sqlite");
const db = new DatabaseSync(":memory:");
db.exec(`CREATE TABLE studies (id INTEGER PRIMARY KEY, aet TEXT NOT NULL, study TEXT NOT NULL, study_date TEXT, study_time TEXT, patient_name TEXT, json TEXT NOT NULL);
CREATE INDEX studies_order ON studies (aet, study_date DESC, study_time DESC, study);`);
const FAMILY = ["SMITH", "MULLER", "GARCIA", "NGUYEN", "XAVIER", "DOE", "BRAUN", "ROSSI", "KOWALSKI", "DIXON", "OLSEN", "PEREZ"];
const ins = db.prepare("insert into studies(aet, study, study_date, study_time, patient_name, json) values('A', ?, ?, '101010', ?, ?)");
db.exec("begin");
for (let s = 0; s < 10000; s++) ins.run(`2.25.88.${s}`, `20${10 + s % 15}0101`, `${FAMILY[s % 12]}^ANNA`, "x".repeat(600));
db.exec("commit");
for (const sql of [
  "select id, json from studies where aet='A' order by study_date desc, study_time desc, study limit 101",
  "select id, json from studies where aet='A' and instr(patient_name, 'X') > 0 order by study_date desc, study_time desc, study limit 101",
  "select id from studies where aet='A' and instr(patient_name, 'X') > 0 order by study_date desc, study_time desc, study limit 101",
  "select count(*) from studies where aet='A' and instr(patient_name, 'X') > 0",
]) {
  const st = db.prepare(sql);
  const t0 = performance.now();
  for (let i = 0; i < 50; i++) st.all();
  console.log(((performance.now() - t0) / 50).toFixed(2), "ms", sql, JSON.stringify(db.prepare("explain query plan " + sql).all().map((r) => r.detail)));
}

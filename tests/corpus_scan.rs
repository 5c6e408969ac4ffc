use std::fs;
#[test]
fn scan() {
    let dir = "../shared/corpus/cloudbuild";
    let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    let (mut ok, mut bad) = (0, 0);
    for p in names {
        let bytes = fs::read(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        match builder::config::load(&bytes) {
            Ok(l) if !l.diagnostics.has_errors() => ok += 1,
            Ok(l) => { bad += 1; for d in l.diagnostics.errors() { println!("{}", d.render(&name)); } }
            Err(d) => { bad += 1; print!("{}", d.render(&name)); }
        }
    }
    println!("ok {ok} bad {bad}");
}

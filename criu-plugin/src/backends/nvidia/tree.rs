//! The processes of a restored tree, from `/proc`, and killing one that must not run.

/// Every task of the tree rooted at `root` (itself first), from `/proc/<pid>/task/*/children`.
pub fn tree_pids(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let pid = out[i];
        i += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("children");
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            for c in text
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
            {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    out
}

/// Kills `pid` (a restored task whose GPU state was not restored: it must not run).
pub fn kill(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

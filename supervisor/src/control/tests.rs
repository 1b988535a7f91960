use super::*;

#[test]
fn restored_file() {
    let cases: [(&str, Result<Option<i32>, ()>); 11] = [
        ("17\n", Ok(Some(17))),
        (" 17 \n", Ok(Some(17))),
        ("2\n", Ok(Some(2))),
        ("17", Ok(None)),
        ("", Ok(None)),
        ("1\n", Err(())),
        ("0\n", Err(())),
        ("-5\n", Err(())),
        ("pid=17\n", Err(())),
        ("17\n18\n", Err(())),
        ("99999999999\n", Err(())),
    ];
    for (text, want) in cases {
        assert_eq!(parse_restored(text).map_err(|_| ()), want, "{text:?}");
    }
}

#[test]
fn failed_file() {
    let cases = [
        ("criu exited 1\n", "criu exited 1"),
        ("  two\nlines\n", "two lines"),
        ("\n", "no reason given"),
        ("", "no reason given"),
        ("tab\there", "tab here"),
    ];
    for (text, want) in cases {
        assert_eq!(parse_failed(text), want, "{text:?}");
    }
    let long = "x".repeat(MAX_REASON * 2);
    assert_eq!(parse_failed(&long).chars().count(), MAX_REASON);
}

#[test]
fn state_lines_round_trip() {
    let states = [
        State::Waiting,
        State::Running { pid: 17 },
        State::Exited { code: 0 },
        State::Exited { code: 143 },
        State::Failed {
            reason: "criu restore: exit 1".into(),
        },
    ];
    for state in states {
        let line = format!("{}\n", state.to_line());
        assert_eq!(State::parse(&line), Ok(state.clone()), "{line:?}");
    }
}

#[test]
fn bad_state_lines() {
    for bad in [
        "",
        "waiting now",
        "running",
        "running pid=",
        "running pid=0",
        "running 17",
        "exited code=256",
        "exited code=-1",
        "failed",
        "ready",
    ] {
        assert!(State::parse(bad).is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn a_failed_reason_with_newlines_stays_one_line() {
    let line = State::Failed {
        reason: "a\nb".into(),
    }
    .to_line();
    assert_eq!(line, "failed reason=a b");
}

#[test]
fn files_in_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(read_control(dir.path()).unwrap(), Control::Pending);
    assert_eq!(read_state(dir.path()).unwrap(), None);

    write_restored(dir.path(), 17).unwrap();
    assert_eq!(read_control(dir.path()).unwrap(), Control::Restored(17));
    write_failed(dir.path(), "boom\n").unwrap();
    assert_eq!(
        read_control(dir.path()).unwrap(),
        Control::Failed("boom".into())
    );

    write_state(dir.path(), &State::Running { pid: 17 }).unwrap();
    assert_eq!(
        read_state(dir.path()).unwrap(),
        Some(State::Running { pid: 17 })
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn refuses_symlinks_fifos_and_big_files() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, "17\n").unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join(RESTORED)).unwrap();
    assert!(matches!(
        read_control(dir.path()),
        Err(ControlError::Io { .. })
    ));

    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join(FAILED);
    rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from(0o600)).unwrap();
    assert!(matches!(
        read_control(dir.path()),
        Err(ControlError::NotRegular { .. })
    ));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(RESTORED), "1".repeat(MAX_FILE + 1)).unwrap();
    assert!(matches!(
        read_control(dir.path()),
        Err(ControlError::TooLarge { .. })
    ));
}

#[test]
fn an_unparsable_restored_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(RESTORED), "seventeen\n").unwrap();
    let err = read_control(dir.path()).unwrap_err();
    assert!(err.to_string().contains("seventeen"), "{err}");
}

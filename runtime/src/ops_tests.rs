use super::*;

/// Renders what `record` records through the exporter every process uses.
fn render(record: impl FnOnce()) -> String {
    let recorder = builder().expect("builder").build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, record);
    handle.render()
}

#[test]
fn every_unit_renders_as_a_histogram_with_buckets_not_a_summary() {
    let text = render(|| {
        metrics::histogram!("pause_ms").record(3.0);
        metrics::histogram!("snapshot_bytes").record(5_000.0);
        metrics::histogram!("batch_seconds").record(0.003);
    });
    assert!(
        !text.contains("quantile="),
        "a summary was rendered:\n{text}"
    );
    for (name, bucket) in [
        ("pause_ms", "le=\"5\"} 1"),
        ("snapshot_bytes", "le=\"16384\"} 1"),
        ("batch_seconds", "le=\"0.005\"} 1"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} histogram")),
            "{name} is not a histogram:\n{text}"
        );
        assert!(
            text.contains(&format!("{name}_bucket{{{bucket}")),
            "{name} lacks bucket {bucket}:\n{text}"
        );
    }
}

/// Every Rust file of the workspace, outside build output.
fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() && name != "target" && name != ".git" && name != "fuzz" {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_histogram_in_the_workspace_is_named_with_a_bucketed_unit() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent");
    let mut files = Vec::new();
    sources(root, &mut files);
    let needle = concat!("histogram", "!(");
    let mut names = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (at, _) in text.match_indices(needle) {
            let rest = text[at + needle.len()..].trim_start();
            if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                names.push((name.to_owned(), file.display().to_string()));
            }
        }
    }
    assert!(
        names.len() >= 8,
        "the scan found too few histograms: {names:?}"
    );
    for (name, file) in names {
        assert!(
            HISTOGRAM_SUFFIXES.iter().any(|s| name.ends_with(s)),
            "histogram {name} in {file} has no bucketed unit suffix {HISTOGRAM_SUFFIXES:?}: it would render as a summary"
        );
    }
}

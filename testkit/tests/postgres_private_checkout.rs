//! The private PostgreSQL server works wherever the checkout lives: here the
//! "checkout" (the working directory and the test-runs directory) sits inside
//! a 0700 directory owned by root, which the `postgres` user cannot enter.
//! Before the server moved its data directory under the system temp dir,
//! `initdb` failed with "could not access directory …: Permission denied".

use adclick_testkit::postgres::Postgres;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn postgres_starts_when_the_checkout_is_in_a_private_directory() -> anyhow::Result<()> {
    let private = std::env::temp_dir().join(format!("adclick-private-{}", std::process::id()));
    let checkout = private.join("clone");
    std::fs::create_dir_all(checkout.join("target/test-runs"))?;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
    std::env::set_current_dir(&checkout)?;
    std::env::set_var("ADCLICK_TEST_RUNS", checkout.join("target/test-runs"));

    let pg = Postgres::start("private")?;
    let server_dir = pg.dir().to_path_buf();
    assert!(
        !server_dir.starts_with(&private),
        "the server directory {} must be outside the private checkout",
        server_dir.display()
    );
    let url = pg.create_database("private_checkout")?;
    let out = Command::new("psql")
        .args([&url, "-tAc", "SELECT 40 + 2"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    // The private directory was never opened up for the server.
    let mode = std::fs::metadata(&private)?.permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o700,
        "the directory above the checkout kept its mode"
    );

    drop(pg);
    assert!(
        !server_dir.exists(),
        "the server directory {} is removed with the server",
        server_dir.display()
    );
    let kept_log = std::fs::read_dir(checkout.join("target/test-runs"))?
        .filter_map(|e| e.ok())
        .any(|e| e.path().join("postgres.log").is_file());
    assert!(
        kept_log,
        "the server log is kept in the test-runs directory"
    );
    std::env::set_current_dir(std::env::temp_dir())?;
    std::fs::remove_dir_all(&private)?;
    Ok(())
}

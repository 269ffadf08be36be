//! The store's connections to PostgreSQL over TLS, as the store URL's `sslmode` and
//! `sslrootcert` say (decision 0032), against the test cluster, which speaks TLS with a
//! certificate for `localhost` and `127.0.0.1` from a CA of its own (`DPS_TEST_POSTGRES_CA`).

use dps_store::postgres::testing::{ca_file, fresh_database};
use dps_store::{PgOpenError, PostgresStore};

/// The test database's name, port and the admin URL's user, from a `fresh_database` URL
/// (`postgres://user@127.0.0.1:port/name`).
fn parts(url: &str) -> (String, String, String) {
    let rest = url.strip_prefix("postgres://").expect("a postgres:// URL");
    let (user, rest) = rest.split_once('@').expect("a user");
    let (address, name) = rest.split_once('/').expect("a database");
    let (_, port) = address.rsplit_once(':').expect("a port");
    (name.to_string(), port.to_string(), user.to_string())
}

/// How many of the sessions open on database `name` are encrypted, and how many are not.
async fn sessions_by_tls(name: &str) -> (i64, i64) {
    let admin = std::env::var(dps_store::postgres::testing::URL_VARIABLE).unwrap();
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.datname = $1",
            &[&name],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Connects a store to `url` (of database `name`), checks that it works and that every session
/// it opened is encrypted.
async fn works_encrypted(url: &str, name: &str) {
    use dps_core::Store;
    let store = PostgresStore::connect(url).await.unwrap();
    assert!(store.get_enrollment("nobody").await.unwrap().is_none());
    let (encrypted, clear) = sessions_by_tls(name).await;
    assert!(
        encrypted >= 1 && clear == 0,
        "{encrypted} encrypted, {clear} in the clear"
    );
}

/// `verify-full` against the cluster's CA connects, every session of the store is encrypted,
/// and the store works; `disable` keeps them all in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_encrypts_every_connection() {
    let url = fresh_database().await;
    let (name, _, _) = parts(&url);
    let ca = ca_file();
    works_encrypted(&format!("{url}?sslmode=verify-full&sslrootcert={ca}"), &name).await;

    let url = fresh_database().await;
    let (name, _, _) = parts(&url);
    let _store = PostgresStore::connect(&format!("{url}?sslmode=disable")).await.unwrap();
    let (encrypted, clear) = sessions_by_tls(&name).await;
    assert!(
        encrypted == 0 && clear >= 1,
        "{encrypted} encrypted, {clear} in the clear"
    );
}

/// A server certificate from a CA the URL does not trust is refused, saying why; one issued for
/// another name is refused by `verify-full` and accepted by `verify-ca`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificates_are_checked_as_sslmode_says() {
    let url = fresh_database().await;
    let (name, port, user) = parts(&url);

    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    let other = dps_pki::ca::LocalCa::generate("not the PostgreSQL CA").unwrap();
    std::fs::write(&other_ca, other.chain_pem()).unwrap();
    let refused = PostgresStore::connect(&format!("{url}?sslmode=verify-full&sslrootcert={}", other_ca.display()))
        .await
        .unwrap_err();
    assert!(matches!(refused, PgOpenError::Connect(_)), "{refused}");
    assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");

    // Dial 127.0.0.1 while naming the server db.invalid, which its certificate does not name.
    let keywords = |mode: &str| {
        format!(
            "host=db.invalid hostaddr=127.0.0.1 port={port} user={user} dbname={name} sslmode={mode} sslrootcert='{}'",
            ca_file()
        )
    };
    let refused = PostgresStore::connect(&keywords("verify-full")).await.unwrap_err();
    assert!(
        refused.to_string().contains("not valid for name \"db.invalid\""),
        "{refused}"
    );
    PostgresStore::connect(&keywords("verify-ca")).await.unwrap();
    // `require` with a root certificate checks the chain too, as libpq does.
    let refused = PostgresStore::connect(&format!("{url}?sslmode=require&sslrootcert={}", other_ca.display()))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");
    // Without one, `require` encrypts and checks nothing.
    PostgresStore::connect(&format!("{url}?sslmode=require")).await.unwrap();
}

/// A role the server lets in only with a client certificate (the test cluster's `dps_cert`):
/// the URL's `sslcert` and `sslkey` present one and the store works; without them the server's
/// refusal is told; one named without the other, or a file that is not there, is told before
/// anything is dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_when_the_url_names_one() {
    let url = fresh_database().await;
    let (name, port, _) = parts(&url);
    let ca = ca_file();
    let dir = std::path::Path::new(&ca).parent().unwrap();
    let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
    let base = format!("postgres://dps_cert@127.0.0.1:{port}/{name}?sslmode=verify-full&sslrootcert={ca}");
    works_encrypted(
        &format!("{base}&sslcert={}&sslkey={}", cert.display(), key.display()),
        &name,
    )
    .await;

    let refused = PostgresStore::connect(&base).await.unwrap_err();
    assert!(matches!(refused, PgOpenError::Connect(_)), "{refused}");
    assert!(refused.to_string().contains("certificate"), "{refused}");

    let refused = PostgresStore::connect(&format!("{base}&sslcert={}", cert.display()))
        .await
        .unwrap_err();
    assert!(matches!(refused, PgOpenError::ClientCertificate { .. }), "{refused}");
    assert!(refused.to_string().contains("both sslcert"), "{refused}");
    let missing = dir.join("no-such.key");
    let refused = PostgresStore::connect(&format!(
        "{base}&sslcert={}&sslkey={}",
        cert.display(),
        missing.display()
    ))
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("no-such.key"), "{refused}");
}

//! The activation blob against a real TPM: swtpm driven by tpm2-tools, the way a device's TPM stack
//! uses it (hub-dice-tpm.md §C3) — PolicySecret(endorsement) → ActivateCredential(SRK, EK) →
//! Import under the SRK → Load → TPM2_HMAC, which must equal software HMAC-SHA256 with the key.

use std::path::Path;
use std::process::Command;

use dps_tpm::swtpm::SwTpm;
use dps_tpm::{registration_id, wrap_key, ActivationBlob, RsaPublic};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// tpm2-tools' credential file: magic, version, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
const CREDENTIAL_MAGIC: u32 = 0xBADC_C0DE;

/// Persistent handles of the device SDKs (hub-dice-tpm.md §C1).
const EK: &str = "0x81010001";
const SRK: &str = "0x81000001";

/// The SRK attributes of the device SDKs' template (device-protocol.md §7.1).
const SRK_ATTRIBUTES: &str = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt";

/// One swtpm and a scratch directory for tpm2-tools files.
struct Tpm {
    sw: SwTpm,
    dir: tempfile::TempDir,
}

impl Tpm {
    fn start() -> Self {
        Self {
            sw: SwTpm::start().expect("swtpm starts (apt-get install swtpm)"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Runs a tpm2-tools command against this TPM; `Err` carries its stderr. Without a resource
    /// manager every context a tool loads stays in the TPM's few object slots, so transient
    /// objects are flushed after each command (their saved contexts stay loadable).
    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let result = self.exec(tool, args);
        if tool != "tpm2_flushcontext" {
            self.exec("tpm2_flushcontext", &["-t"])
                .expect("flushing transient objects");
        }
        result
    }

    fn exec(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let out = Command::new(tool)
            .args(args)
            .current_dir(self.dir.path())
            .env("TPM2TOOLS_TCTI", self.sw.tcti())
            .output()
            .unwrap_or_else(|e| panic!("{tool} runs (apt-get install tpm2-tools): {e}"));
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn must(&self, tool: &str, args: &[&str]) {
        if let Err(e) = self.run(tool, args) {
            panic!("{tool} {args:?} failed: {e}");
        }
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name)).unwrap()
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(Path::new(&self.path(name)), bytes).unwrap();
    }

    /// Creates the EK (TCG template) and an SRK with the SDK template, persisted at the handles
    /// the device SDKs use; returns their marshalled TPM2B_PUBLIC, as a device would send them.
    fn keys(&self) -> (Vec<u8>, Vec<u8>) {
        self.must("tpm2_createek", &["-c", EK, "-G", "rsa", "-u", "ek.pub"]);
        self.must(
            "tpm2_createprimary",
            &[
                "-C",
                "o",
                "-g",
                "sha256",
                "-G",
                "rsa2048:null:aes128cfb",
                "-a",
                SRK_ATTRIBUTES,
                "-c",
                "srk.ctx",
            ],
        );
        self.must("tpm2_evictcontrol", &["-C", "o", "-c", "srk.ctx", SRK]);
        self.must("tpm2_readpublic", &["-c", SRK, "-o", "srk.pub"]);
        (self.read("ek.pub"), self.read("srk.pub"))
    }

    /// ActivateCredential with the EK under its policy; returns the inner key.
    fn activate(&self, blob: &ActivationBlob) -> Result<Vec<u8>, String> {
        let mut cred = Vec::new();
        cred.extend_from_slice(&CREDENTIAL_MAGIC.to_be_bytes());
        cred.extend_from_slice(&1u32.to_be_bytes());
        for part in [&blob.credential_blob, &blob.secret] {
            cred.extend_from_slice(&(part.len() as u16).to_be_bytes());
            cred.extend_from_slice(part);
        }
        self.write("cred.blob", &cred);
        self.must("tpm2_startauthsession", &["--policy-session", "-S", "session.ctx"]);
        self.must("tpm2_policysecret", &["-S", "session.ctx", "-c", "e"]);
        let r = self.run(
            "tpm2_activatecredential",
            &[
                "-c",
                SRK,
                "-C",
                EK,
                "-i",
                "cred.blob",
                "-o",
                "inner.key",
                "-P",
                "session:session.ctx",
            ],
        );
        self.must("tpm2_flushcontext", &["session.ctx"]);
        r.map(|_| self.read("inner.key"))
    }

    /// Import + Load under the SRK; then the identity key is `id.ctx`.
    fn import(&self, blob: &ActivationBlob, inner_key: &[u8]) -> Result<(), String> {
        let tpm2b = |b: &[u8]| [&(b.len() as u16).to_be_bytes()[..], b].concat();
        self.write("id.pub", &tpm2b(&blob.public));
        self.write("id.dpriv", &tpm2b(&blob.duplicate));
        self.write("id.seed", &tpm2b(&blob.in_sym_seed));
        self.write("inner.key", inner_key);
        self.run(
            "tpm2_import",
            &[
                "-C",
                SRK,
                "-u",
                "id.pub",
                "-i",
                "id.dpriv",
                "-s",
                "id.seed",
                "-k",
                "inner.key",
                "-r",
                "id.priv",
            ],
        )?;
        self.run(
            "tpm2_load",
            &["-C", SRK, "-u", "id.pub", "-r", "id.priv", "-c", "id.ctx"],
        )
    }

    /// TPM2_HMAC with the imported identity key.
    fn hmac(&self, data: &[u8]) -> Vec<u8> {
        self.write("msg.bin", data);
        self.must(
            "tpm2_hmac",
            &["-c", "id.ctx", "-g", "sha256", "-o", "mac.bin", "msg.bin"],
        );
        self.read("mac.bin")
    }
}

fn software_hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

#[test]
fn a_real_tpm_activates_imports_and_signs_with_the_wrapped_key() {
    let tpm = Tpm::start();
    let (ek, srk) = tpm.keys();
    // The files tpm2-tools writes are the TPM2B_PUBLIC devices send, and parse as such.
    let ek_public = RsaPublic::endorsement_key(&ek).unwrap();
    assert_eq!(ek_public.to_tpm2b(), ek);
    assert_eq!(ek.len(), 316);
    RsaPublic::storage_root_key(&srk).unwrap();
    assert_eq!(registration_id(&ek).len(), 52);

    let mut rng = rand::thread_rng();
    let key: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    let blob = wrap_key(&ek, &srk, &key, &mut rng).unwrap();
    // The bytes the device gets parse back into the same structures.
    assert_eq!(ActivationBlob::parse(&blob.to_bytes().unwrap()).unwrap(), blob);

    let inner = tpm.activate(&blob).expect("ActivateCredential");
    assert_eq!(inner.len(), 16);
    tpm.import(&blob, &inner).expect("Import and Load");
    let msg = b"0ne00000001%2Fregistrations%2Fdevice-1\n1767225600";
    assert_eq!(tpm.hmac(msg), software_hmac(&key, msg));

    // A second blob (the hub key, after assignment) imports the same way.
    let hub_key = [0x42u8; 32];
    let second = wrap_key(&ek, &srk, &hub_key, &mut rng).unwrap();
    let inner = tpm.activate(&second).expect("ActivateCredential of the second blob");
    tpm.import(&second, &inner).expect("Import of the second blob");
    assert_eq!(tpm.hmac(b"x"), software_hmac(&hub_key, b"x"));

    // Tampering with the duplicate fails Import's integrity check.
    let mut tampered = blob.clone();
    tampered.duplicate[40] ^= 1;
    let inner = tpm.activate(&tampered).expect("the credential part is intact");
    let e = tpm.import(&tampered, &inner).unwrap_err();
    assert!(e.to_lowercase().contains("integrity"), "{e}");
}

#[test]
fn a_blob_for_another_tpm_does_not_activate() {
    let (a, b) = (Tpm::start(), Tpm::start());
    let (ek_a, srk_a) = a.keys();
    let (ek_b, srk_b) = b.keys();
    assert_ne!(ek_a, ek_b, "each swtpm has its own endorsement seed");
    let mut rng = rand::thread_rng();
    let key = [7u8; 32];

    // Made for A's EK: B's EK cannot decrypt the seed.
    let for_a = wrap_key(&ek_a, &srk_a, &key, &mut rng).unwrap();
    assert!(b.activate(&for_a).is_err());
    // A's EK but bound to B's SRK name: A's ActivateCredential with A's SRK fails the integrity
    // check, so a credential cannot be redirected to another storage key.
    let wrong_srk = wrap_key(&ek_a, &srk_b, &key, &mut rng).unwrap();
    let e = a.activate(&wrong_srk).unwrap_err();
    assert!(e.to_lowercase().contains("integrity"), "{e}");
    // And the right one works on A.
    let inner = a.activate(&for_a).unwrap();
    a.import(&for_a, &inner).unwrap();
    assert_eq!(a.hmac(b"m"), software_hmac(&key, b"m"));
}

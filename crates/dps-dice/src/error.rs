//! The error type of the DICE module.

/// Why a DICE identity could not be derived or certified.
///
/// Like [`PkiError`](dps_pki::PkiError), underlying library errors are shown in the message rather
/// than exposed as `source()`, so that `{e}` in a CLI or API response says everything once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiceError {
    /// The UDS text is not exactly 64 hexadecimal digits (the DevKit tooling's form of a
    /// 32-byte UDS).
    #[error("invalid UDS: {0}")]
    InvalidUds(String),

    /// The registration id cannot go into the certificate: empty, too long, or a character the
    /// scheme does not allow (the DevKit tool allows lowercase letters, digits and `-`; the TCG
    /// scheme the characters DPS allows in a registration id).
    #[error("invalid registration id {id:?}: {reason}")]
    InvalidRegistrationId {
        /// The registration id as given.
        id: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An automatic DevKit registration id was requested with a MAC address that is not 12
    /// characters long (the tool's only check on it).
    #[error("invalid MAC address {0:?}: expected 12 characters")]
    InvalidMacAddress(String),

    /// An automatic DevKit registration id was requested with a firmware version that is not
    /// of the form `num.num.num` (digits, exactly two dots, none leading, trailing or doubled).
    #[error("invalid firmware version {0:?}: expected num.num.num")]
    InvalidFirmwareVersion(String),

    /// The linker map has no line containing this text together with a `0x` address, or the
    /// last such line's address is zero (which the DevKit tool also treats as missing). The
    /// firmware was probably not built with the DevKit linker script, or the map belongs to
    /// another build.
    #[error("the linker map has no line with {pattern:?} and a non-zero 0x address")]
    MapSymbolMissing {
        /// The text searched for, e.g. `__start_riot_core = .`.
        pattern: &'static str,
    },

    /// A section's addresses from the map do not describe bytes of the `.bin` image: the start
    /// lies before the flash origin, the stop before the start, or the stop past the end of
    /// the image. Usually the `.bin` and `.map` come from different builds.
    #[error(
        "the {section} range 0x{start:x}..0x{stop:x} is not inside the image \
         (flash origin 0x{origin:x}, {image_len} bytes)"
    )]
    RangeOutsideImage {
        /// `riot_core` or `riot_fw`.
        section: &'static str,
        /// Address of the `__start_` symbol.
        start: u64,
        /// Address of the `__stop_` symbol.
        stop: u64,
        /// The FLASH origin the image starts at.
        origin: u64,
        /// Length of the image in bytes.
        image_len: usize,
    },

    /// The RIoT Core range is shorter than the 8 bytes the DICE measurement requires
    /// (`_DiceMeasure` refuses it, so no DevKit could boot such an image).
    #[error("the riot_core range is {0} bytes; DICE measures at least 8")]
    RiotCoreTooShort(usize),

    /// A derived private key was 0 or not below the P-256 group order. The DevKit code would
    /// loop forever here; the chance is about 2^-32 per derivation.
    #[error("the {0} key derivation produced an invalid P-256 scalar")]
    DerivedKeyOutOfRange(&'static str),

    /// The CA given to issue the DeviceID certificate cannot be used: its certificate or key
    /// does not parse, the certificate is not a CA, the key type is unsupported, or the key
    /// does not belong to the certificate.
    #[error("unusable CA for the DeviceID certificate: {0}")]
    InvalidCa(String),

    /// A stored DeviceID certificate was supplied, but it certifies a different public key
    /// than the one derived from this UDS (wrong device, or the certificate is corrupted).
    #[error("the supplied DeviceID certificate does not certify this device's DeviceID key")]
    DeviceIdCertMismatch,

    /// The options are inconsistent (for example a validity that ends before it starts), or a
    /// stored DeviceID certificate does not parse.
    #[error("invalid DICE options: {0}")]
    InvalidOptions(String),

    /// DER encoding failed: a value does not fit the structure (for example a name longer than
    /// the encoder allows).
    #[error("DER encoding failed: {0}")]
    Der(der::Error),

    /// A key could not be serialised as SEC1, PKCS#8 or SubjectPublicKeyInfo (it cannot happen
    /// for the P-256 keys this module derives; this reports the impossible rather than
    /// panicking).
    #[error("key encoding failed: {0}")]
    KeyEncoding(String),

    /// The signing library refused to sign (it does not for valid keys; this reports the
    /// impossible rather than panicking).
    #[error("signing failed: {0}")]
    Signing(String),
}

impl From<der::Error> for DiceError {
    fn from(e: der::Error) -> Self {
        DiceError::Der(e)
    }
}

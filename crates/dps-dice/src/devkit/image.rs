//! The RIoT Core and RIoT FW byte ranges of a DevKit firmware image.
//!
//! The DevKit linker script (`AZ3166.ld`) places the code the DICE engine measures in two
//! sections inside `.text`, bracketed by symbols: `__start_riot_core`/`__stop_riot_core` (the
//! RIoT Core, which becomes the DeviceID) and `__start_riot_fw`/`__stop_riot_fw` (the firmware
//! measured into the FWID, which becomes the Alias key). The enrollment tool reads those
//! addresses from the GNU ld `.map` file and cuts the ranges out of the `.bin`, which starts at
//! the FLASH origin. The certificate depends on every byte of both ranges, so the ranges must
//! come out exactly as the tool computes them — including its quirks, reproduced here:
//!
//! - the map is read with `fgets` into a 128-byte buffer, so a line longer than 127 bytes is
//!   searched as several pieces (a symbol and its address split across pieces do not match);
//! - a piece matches when it contains the search text **and** `0x` anywhere; the address is
//!   the hexadecimal number after the first `0x` of the piece (`strtoul`, saturating);
//! - every matching piece overwrites the previous result, so the **last** match wins;
//! - an address of zero counts as "not found";
//! - the FLASH origin comes from the Memory Configuration line, found by the text
//!   `"FLASH            0x"` (twelve spaces, as GNU ld aligns the table).

use std::ops::Range;

use crate::DiceError;

/// The text that finds the FLASH origin in the map's Memory Configuration table.
pub const FLASH_ORIGIN_PATTERN: &str = "FLASH            0x";
/// The map text of the start of the RIoT Core section.
pub const START_RIOT_CORE: &str = "__start_riot_core = .";
/// The map text of the end of the RIoT Core section.
pub const STOP_RIOT_CORE: &str = "__stop_riot_core = .";
/// The map text of the start of the RIoT FW section.
pub const START_RIOT_FW: &str = "__start_riot_fw = .";
/// The map text of the end of the RIoT FW section.
pub const STOP_RIOT_FW: &str = "__stop_riot_fw = .";

/// The size of the tool's `fgets` buffer: pieces are at most one byte shorter.
const FGETS_BUFFER: usize = 128;

/// The DICE engine refuses to measure fewer bytes than this (`_DiceMeasure`).
pub(crate) const MIN_RIOT_CORE_LEN: usize = 8;

/// The addresses the enrollment tool reads from a DevKit linker map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapLayout {
    /// Address of the first byte of the `.bin` image.
    pub flash_origin: u64,
    /// `__start_riot_core .. __stop_riot_core`.
    pub riot_core: Range<u64>,
    /// `__start_riot_fw .. __stop_riot_fw`.
    pub riot_fw: Range<u64>,
}

/// Reads the FLASH origin and the two section ranges from a GNU ld map, as the DevKit tool
/// does (see the module documentation for the exact matching rules).
///
/// The map is taken as bytes because map files can hold paths in any encoding; only ASCII is
/// ever matched. Fails with [`DiceError::MapSymbolMissing`] naming the first text not found.
pub fn parse_map(map: &[u8]) -> Result<MapLayout, DiceError> {
    let find = |pattern: &'static str| find_address(map, pattern).ok_or(DiceError::MapSymbolMissing { pattern });
    Ok(MapLayout {
        flash_origin: find(FLASH_ORIGIN_PATTERN)?,
        riot_core: find(START_RIOT_CORE)?..find(STOP_RIOT_CORE)?,
        riot_fw: find(START_RIOT_FW)?..find(STOP_RIOT_FW)?,
    })
}

/// The measured parts of a DevKit firmware image: the RIoT Core bytes (measured into the CDI)
/// and the RIoT FW bytes (measured into the FWID).
#[derive(Clone, PartialEq, Eq)]
pub struct FirmwareImage {
    riot_core: Vec<u8>,
    riot_fw: Vec<u8>,
    layout: Option<MapLayout>,
}

impl std::fmt::Debug for FirmwareImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirmwareImage")
            .field("riot_core_len", &self.riot_core.len())
            .field("riot_fw_len", &self.riot_fw.len())
            .field("layout", &self.layout)
            .finish()
    }
}

impl FirmwareImage {
    /// Cuts the RIoT Core and RIoT FW ranges out of a `.bin` image using the addresses in its
    /// `.map`, as the DevKit enrollment tool does: `bin[start - origin .. stop - origin]` for
    /// each section.
    ///
    /// Fails when a symbol is missing from the map, when a range does not lie inside the image,
    /// or when the RIoT Core is shorter than the 8 bytes DICE measures.
    pub fn from_bin_and_map(bin: &[u8], map: &[u8]) -> Result<FirmwareImage, DiceError> {
        let layout = parse_map(map)?;
        let riot_core = slice(bin, layout.flash_origin, &layout.riot_core, "riot_core")?.to_vec();
        let riot_fw = slice(bin, layout.flash_origin, &layout.riot_fw, "riot_fw")?.to_vec();
        let mut image = FirmwareImage::from_ranges(riot_core, riot_fw)?;
        image.layout = Some(layout);
        Ok(image)
    }

    /// An image given directly by its two measured ranges (for example read from an ELF file,
    /// or a test vector). Fails when the RIoT Core is shorter than 8 bytes.
    pub fn from_ranges(riot_core: Vec<u8>, riot_fw: Vec<u8>) -> Result<FirmwareImage, DiceError> {
        if riot_core.len() < MIN_RIOT_CORE_LEN {
            return Err(DiceError::RiotCoreTooShort(riot_core.len()));
        }
        Ok(FirmwareImage {
            riot_core,
            riot_fw,
            layout: None,
        })
    }

    /// The RIoT Core bytes.
    pub fn riot_core(&self) -> &[u8] {
        &self.riot_core
    }

    /// The RIoT FW bytes (their SHA-256 is the FWID).
    pub fn riot_fw(&self) -> &[u8] {
        &self.riot_fw
    }

    /// The addresses the ranges were cut at, when the image came from a `.bin` and `.map`.
    pub fn layout(&self) -> Option<&MapLayout> {
        self.layout.as_ref()
    }
}

fn slice<'a>(bin: &'a [u8], origin: u64, range: &Range<u64>, section: &'static str) -> Result<&'a [u8], DiceError> {
    let outside = || DiceError::RangeOutsideImage {
        section,
        start: range.start,
        stop: range.end,
        origin,
        image_len: bin.len(),
    };
    if range.end < range.start {
        return Err(outside());
    }
    let start = range.start.checked_sub(origin).ok_or_else(outside)?;
    let stop = range.end.checked_sub(origin).ok_or_else(outside)?;
    let start = usize::try_from(start).map_err(|_| outside())?;
    let stop = usize::try_from(stop).map_err(|_| outside())?;
    bin.get(start..stop).ok_or_else(outside)
}

/// The address on the last map piece that contains `pattern` and `0x`; `None` when there is
/// none or it is zero.
fn find_address(map: &[u8], pattern: &str) -> Option<u64> {
    let mut result = 0u64;
    for piece in fgets_pieces(map) {
        // `strstr` stops at a NUL byte.
        let piece = piece.split(|&b| b == 0).next().unwrap_or_default();
        if contains(piece, pattern.as_bytes()) {
            if let Some(at) = find(piece, b"0x") {
                result = strtoul_hex(&piece[at + 2..]);
            }
        }
    }
    (result != 0).then_some(result)
}

/// The pieces `fgets(buf, 128, file)` returns: up to 127 bytes, ending after a newline when one
/// comes first.
fn fgets_pieces(map: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = map;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let limit = rest.len().min(FGETS_BUFFER - 1);
        let len = rest[..limit]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(limit, |nl| nl + 1);
        let (piece, tail) = rest.split_at(len);
        rest = tail;
        Some(piece)
    })
}

/// `strtoul(text, NULL, 16)` after its `0x` prefix: the leading hexadecimal digits, saturating
/// at the maximum like `strtoul` does on overflow; 0 when there are none.
fn strtoul_hex(digits: &[u8]) -> u64 {
    digits
        .iter()
        .map_while(|&b| (b as char).to_digit(16))
        .try_fold(0u64, |acc, d| acc.checked_mul(16)?.checked_add(u64::from(d)))
        .unwrap_or(u64::MAX)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &[u8] = include_bytes!("../../tests/fixtures/dice/devkitdps.ino.map");

    #[test]
    fn fixture_map_layout() {
        let layout = parse_map(MAP).unwrap();
        assert_eq!(layout.flash_origin, 0x0800_c000);
        assert_eq!(layout.riot_core, 0x0800_d000..0x0800_d800);
        assert_eq!(layout.riot_fw, 0x0800_d800..0x0801_0800);
    }

    #[test]
    fn last_match_wins_and_zero_is_missing() {
        let map = b"FLASH            0x1000 0x100\n\
            0x1000 __start_riot_core = .\n0x1010 __start_riot_core = .\n\
            0x1020 __stop_riot_core = .\n0x1020 __start_riot_fw = .\n0x1030 __stop_riot_fw = .\n";
        let layout = parse_map(map).unwrap();
        assert_eq!(layout.riot_core, 0x1010..0x1020);

        let zero = b"FLASH            0x0 0x100\n";
        assert!(matches!(
            parse_map(zero),
            Err(DiceError::MapSymbolMissing {
                pattern: FLASH_ORIGIN_PATTERN
            })
        ));
    }

    #[test]
    fn missing_symbol_is_named() {
        let map = b"FLASH            0x1000 0x100\n0x1000 __start_riot_core = .\n";
        let err = parse_map(map).unwrap_err();
        assert!(
            matches!(
                err,
                DiceError::MapSymbolMissing {
                    pattern: STOP_RIOT_CORE
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("__stop_riot_core = ."), "{err}");
    }

    #[test]
    fn a_symbol_line_needs_its_address_on_the_same_line() {
        // The symbol text without a 0x address on its line does not count.
        assert_eq!(find_address(b"__start_riot_fw = .\n0x10\n", START_RIOT_FW), None);
        // The first 0x of the line is the one parsed, even before the symbol.
        assert_eq!(
            find_address(b"  0x20  0x30 __start_riot_fw = .\n", START_RIOT_FW),
            Some(0x20)
        );
    }

    #[test]
    fn long_lines_are_searched_in_127_byte_pieces() {
        // The address ends up in the first piece and the symbol in the second: no match.
        let mut line = b"0x40".to_vec();
        line.extend(std::iter::repeat_n(b' ', 130));
        line.extend_from_slice(b"__start_riot_fw = .\n");
        assert_eq!(find_address(&line, START_RIOT_FW), None);
        let pieces: Vec<_> = fgets_pieces(&line).collect();
        assert_eq!(pieces[0].len(), 127);
        assert_eq!(pieces.concat(), line);
    }

    #[test]
    fn hex_parsing_is_strtoul_like() {
        assert_eq!(strtoul_hex(b"000000000800c000 0x1"), 0x0800_c000);
        assert_eq!(strtoul_hex(b"AbC"), 0xabc);
        assert_eq!(strtoul_hex(b""), 0);
        assert_eq!(strtoul_hex(b"1ffffffffffffffff"), u64::MAX);
    }

    #[test]
    fn ranges_outside_the_image_are_refused() {
        let bin = vec![0u8; 0x100];
        let map = |core: &str, fw: &str| {
            format!(
                "FLASH            0x1000 0x100\n{core} __start_riot_core = .\n0x1080 __stop_riot_core = .\n\
                 0x1080 __start_riot_fw = .\n{fw} __stop_riot_fw = .\n"
            )
        };
        let ok = FirmwareImage::from_bin_and_map(&bin, map("0x1000", "0x1100").as_bytes()).unwrap();
        assert_eq!(ok.riot_core().len(), 0x80);
        assert_eq!(ok.riot_fw().len(), 0x80);
        assert_eq!(ok.layout().unwrap().flash_origin, 0x1000);

        let past_end = FirmwareImage::from_bin_and_map(&bin, map("0x1000", "0x1101").as_bytes()).unwrap_err();
        assert!(
            matches!(past_end, DiceError::RangeOutsideImage { section: "riot_fw", .. }),
            "{past_end:?}"
        );
        let before_origin = FirmwareImage::from_bin_and_map(&bin, map("0x0fff", "0x1100").as_bytes()).unwrap_err();
        assert!(matches!(
            before_origin,
            DiceError::RangeOutsideImage {
                section: "riot_core",
                ..
            }
        ));
        let reversed = FirmwareImage::from_bin_and_map(&bin, map("0x1081", "0x1100").as_bytes()).unwrap_err();
        assert!(matches!(
            reversed,
            DiceError::RangeOutsideImage {
                section: "riot_core",
                ..
            }
        ));
        let short = FirmwareImage::from_bin_and_map(&bin, map("0x107c", "0x1100").as_bytes()).unwrap_err();
        assert!(matches!(short, DiceError::RiotCoreTooShort(4)));
    }
}

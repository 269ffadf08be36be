//! `geoLatency` allocation without a latency signal: Azure sends a device to the linked hub with
//! the lowest latency (Traffic Manager's method); here the operator says where devices are — a
//! map of source networks to locations ([`GeoConfig`]) — and where each hub is (its linked
//! `location`), and the nearest hub wins. Distance is the great-circle distance between the
//! locations' coordinates (Azure's regions are built in, others come from the configuration);
//! a hub in the device's own location is at distance zero whether or not its coordinates are
//! known. Hubs equally near are chosen among by the weighted hash `hashed` uses; a device whose
//! location is unknown, or near no hub with a known location, is hashed over every candidate.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::LinkedHub;

/// Where devices and hubs are, for `geoLatency`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GeoConfig {
    /// Source networks and the location of the devices in each; the most specific network
    /// containing a device's address names its location.
    pub networks: Vec<(IpNet, String)>,
    /// Coordinates (latitude, longitude in degrees) of locations besides Azure's regions (or in
    /// their place), by lower-cased name.
    pub locations: HashMap<String, (f64, f64)>,
}

/// Azure regions and the coordinates of the cities they are in, approximately (enough to tell
/// which region is nearer): the names a linked hub's `location` usually holds.
const AZURE_REGIONS: &[(&str, f64, f64)] = &[
    ("australiacentral", -35.31, 149.12),
    ("australiaeast", -33.86, 151.21),
    ("australiasoutheast", -37.81, 144.96),
    ("brazilsouth", -23.55, -46.63),
    ("canadacentral", 43.65, -79.38),
    ("canadaeast", 46.81, -71.21),
    ("centralindia", 18.58, 73.92),
    ("centralus", 41.59, -93.60),
    ("eastasia", 22.27, 114.19),
    ("eastus", 37.37, -79.82),
    ("eastus2", 36.67, -78.39),
    ("francecentral", 48.86, 2.35),
    ("germanywestcentral", 50.11, 8.68),
    ("italynorth", 45.46, 9.19),
    ("japaneast", 35.68, 139.77),
    ("japanwest", 34.69, 135.50),
    ("koreacentral", 37.57, 126.98),
    ("northcentralus", 41.88, -87.63),
    ("northeurope", 53.35, -6.26),
    ("norwayeast", 59.91, 10.75),
    ("polandcentral", 52.23, 21.01),
    ("qatarcentral", 25.29, 51.53),
    ("southafricanorth", -25.73, 28.22),
    ("southcentralus", 29.42, -98.49),
    ("southeastasia", 1.28, 103.83),
    ("southindia", 12.98, 80.16),
    ("swedencentral", 60.67, 17.14),
    ("switzerlandnorth", 47.45, 8.56),
    ("uaenorth", 25.27, 55.30),
    ("uksouth", 51.51, -0.13),
    ("ukwest", 53.43, -3.08),
    ("westcentralus", 41.14, -104.82),
    ("westeurope", 52.37, 4.90),
    ("westindia", 19.09, 72.87),
    ("westus", 37.78, -122.42),
    ("westus2", 47.23, -119.85),
    ("westus3", 33.45, -112.07),
];

/// Hubs whose distances differ by less than this (km) are equally near.
const SAME_DISTANCE_KM: f64 = 1.0;

impl GeoConfig {
    /// The location of a device connecting from `source`: that of the most specific network
    /// containing it.
    pub fn device_location(&self, source: IpAddr) -> Option<&str> {
        self.networks
            .iter()
            .filter(|(net, _)| net.contains(&source))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, location)| location.as_str())
    }

    /// A location's coordinates: the configuration's (by lower-cased name), else the Azure
    /// region's (its name as Azure's display name or programmatic name: `West US`, `westus`).
    fn coordinates(&self, location: &str) -> Option<(f64, f64)> {
        let name = location.to_ascii_lowercase();
        self.locations.get(&name).copied().or_else(|| {
            let region = name.replace([' ', '-'], "");
            AZURE_REGIONS
                .iter()
                .find(|(n, _, _)| *n == region)
                .map(|&(_, lat, lon)| (lat, lon))
        })
    }

    /// Kilometres between two locations: 0 for the same name, the great-circle distance when
    /// both have coordinates, else unknown.
    fn distance(&self, a: &str, b: &str) -> Option<f64> {
        if a.eq_ignore_ascii_case(b) {
            return Some(0.0);
        }
        let ((lat1, lon1), (lat2, lon2)) = (self.coordinates(a)?, self.coordinates(b)?);
        let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
        let (dp, dl) = ((lat2 - lat1).to_radians(), (lon2 - lon1).to_radians());
        let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        Some(2.0 * 6371.0 * h.sqrt().asin())
    }

    /// The candidates nearest a device at `source`: those at the least known distance from its
    /// location, or every candidate when that cannot be told.
    pub(super) fn nearest<'a>(&self, source: Option<IpAddr>, candidates: &[&'a LinkedHub]) -> Vec<&'a LinkedHub> {
        let everyone = || candidates.to_vec();
        let Some(here) = source.and_then(|s| self.device_location(s)) else {
            return everyone();
        };
        let known: Vec<(f64, &LinkedHub)> = candidates
            .iter()
            .copied()
            .filter_map(|h| Some((self.distance(here, h.location.as_deref()?)?, h)))
            .collect();
        let Some(best) = known.iter().map(|(d, _)| *d).min_by(f64::total_cmp) else {
            return everyone();
        };
        known
            .into_iter()
            .filter(|(d, _)| *d - best < SAME_DISTANCE_KM)
            .map(|(_, h)| h)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(name: &str, location: Option<&str>) -> LinkedHub {
        LinkedHub {
            location: location.map(str::to_string),
            ..LinkedHub::new(name)
        }
    }

    fn all(hubs: &[LinkedHub]) -> Vec<&LinkedHub> {
        hubs.iter().collect()
    }

    fn geo() -> GeoConfig {
        GeoConfig {
            networks: vec![
                ("10.0.0.0/8".parse().unwrap(), "westus".into()),
                ("10.1.0.0/16".parse().unwrap(), "northeurope".into()),
                ("10.2.0.0/16".parse().unwrap(), "factory-a".into()),
                ("10.3.0.0/16".parse().unwrap(), "nowhere".into()),
                ("fd00::/8".parse().unwrap(), "japaneast".into()),
            ],
            locations: HashMap::from([("factory-a".to_string(), (48.14, 11.58))]),
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_most_specific_network_places_the_device() {
        let g = geo();
        assert_eq!(g.device_location("10.9.9.9".parse().unwrap()), Some("westus"));
        assert_eq!(g.device_location("10.1.2.3".parse().unwrap()), Some("northeurope"));
        assert_eq!(g.device_location("fd00::1".parse().unwrap()), Some("japaneast"));
        assert_eq!(g.device_location("192.0.2.1".parse().unwrap()), None);
    }

    #[test]
    fn the_nearest_hub_wins_and_ties_stay_for_the_hash() {
        let g = geo();
        let hubs = [
            hub("eu", Some("westeurope")),
            hub("us", Some("West US")),
            hub("jp", Some("japaneast")),
            hub("unplaced", None),
        ];
        let names = |v: Vec<&LinkedHub>| v.into_iter().map(|h| h.host_name.clone()).collect::<Vec<_>>();
        // Dublin is nearest Amsterdam; California has its own; Munich (configured) is nearest
        // Amsterdam too.
        assert_eq!(names(g.nearest(ip("10.1.0.9"), &all(&hubs))), ["eu"]);
        assert_eq!(names(g.nearest(ip("10.200.0.1"), &all(&hubs))), ["us"]);
        assert_eq!(names(g.nearest(ip("10.2.0.1"), &all(&hubs))), ["eu"]);
        // Unknown device location, or one without coordinates and no hub there: everyone.
        assert_eq!(names(g.nearest(ip("192.0.2.1"), &all(&hubs))).len(), 4);
        assert_eq!(names(g.nearest(ip("10.3.0.1"), &all(&hubs))).len(), 4);
        assert_eq!(names(g.nearest(None, &all(&hubs))).len(), 4);
        // Two hubs in the same region are a tie.
        let twins = [
            hub("a", Some("westeurope")),
            hub("b", Some("westeurope")),
            hub("c", Some("eastus")),
        ];
        assert_eq!(names(g.nearest(ip("10.1.0.1"), &all(&twins))), ["a", "b"]);
        // A named location with no coordinates still matches a hub there.
        let odd = [hub("x", Some("nowhere")), hub("y", Some("westeurope"))];
        assert_eq!(names(g.nearest(ip("10.3.0.1"), &all(&odd))), ["x"]);
    }
}

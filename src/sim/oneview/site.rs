//! What a simulated appliance manages, as far as its alerts show it: how its enclosures, bays
//! and interconnects are named. Several simulators started side by side (`simulate oneview
//! --appliances N`, the `demo`'s estate) each get their own [`Site`], so an alert's resource
//! name tells which appliance raised it, as it does in a real estate; [`estate`] names and
//! describes those appliances, [`estate_password`] gives each its own password.

use serde::{Deserialize, Serialize};

/// How an appliance's generated alerts name their hardware. Read when the simulator starts
/// (resources are interned), so it is not part of the run-time configuration patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Site {
    /// What the appliance manages, for people ("Synergy frame set, data centre 2").
    pub description: String,
    /// Enclosure (Synergy frame, c7000) names; `{n}` becomes the two-digit enclosure number.
    pub enclosure_name: String,
    /// Server bays per enclosure (Synergy 12000 frame: 12, BladeSystem c7000: 16).
    pub bays: u64,
    /// Interconnect bays per enclosure (Synergy: 6, c7000: 8).
    pub interconnect_bays: u64,
    /// Name of the logical enclosure that alerts about one carry; `None`: the template's own.
    pub logical_enclosure: Option<String>,
}

impl Default for Site {
    /// The lab Synergy of the fixture the templates come from (serials `SGH8..YECA`).
    fn default() -> Self {
        Self {
            description: "Synergy frame set".to_owned(),
            enclosure_name: "SGH8{n}YECA".to_owned(),
            bays: 12,
            interconnect_bays: 6,
            logical_enclosure: None,
        }
    }
}

impl Site {
    /// A Synergy frame set in data centre `dc`; data centre 1 is the fixture's [`Site::default`].
    pub fn synergy(dc: usize) -> Self {
        if dc <= 1 {
            return Self {
                description: "Synergy frame set, data centre 1".to_owned(),
                ..Self::default()
            };
        }
        Self {
            description: format!("Synergy frame set, data centre {dc}"),
            // The fixed tail keeps `{dc}{n}` unambiguous whatever the number of digits of dc.
            enclosure_name: format!("MXQ{dc}{{n}}SYN"),
            logical_enclosure: Some(format!("DC{dc}-LE_01")),
            ..Self::default()
        }
    }

    /// A BladeSystem c7000 lab.
    pub fn bladesystem_lab() -> Self {
        Self {
            description: "BladeSystem c7000 lab".to_owned(),
            enclosure_name: "LAB-C7000-{n}".to_owned(),
            bays: 16,
            interconnect_bays: 8,
            logical_enclosure: Some("LAB-LE_01".to_owned()),
        }
    }

    /// The name of enclosure `n` (0..100).
    pub fn enclosure(&self, n: u64) -> String {
        self.enclosure_name
            .replace("{n}", &format!("{:02}", n % 100))
    }
}

/// The appliances of a simulated estate of `n`, in order: a Synergy frame set (`synergy-dc1`),
/// a second data centre (`synergy-dc2`), a BladeSystem lab (`bladesystem-lab`), then more data
/// centres (`synergy-dc3`, ...). Names are unique and valid `[[appliances]]` names.
pub fn estate(n: usize) -> Vec<(String, Site)> {
    (0..n)
        .map(|i| match i {
            0 => ("synergy-dc1".to_owned(), Site::synergy(1)),
            1 => ("synergy-dc2".to_owned(), Site::synergy(2)),
            2 => ("bladesystem-lab".to_owned(), Site::bladesystem_lab()),
            _ => (format!("synergy-dc{i}"), Site::synergy(i)),
        })
        .collect()
}

/// The password of appliance `name` in an estate started with `base`: its own, so a session
/// can only come from that appliance's credentials, as with real appliances.
pub fn estate_password(base: &str, name: &str) -> String {
    format!("{base}-{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estate_names_and_enclosures_are_distinct() {
        let e = estate(12);
        let mut names: Vec<&str> = e.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            &names[..4],
            [
                "synergy-dc1",
                "synergy-dc2",
                "bladesystem-lab",
                "synergy-dc3"
            ]
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 12);
        let mut enclosures: Vec<String> = e
            .iter()
            .flat_map(|(_, s)| (0..40).map(|n| s.enclosure(n)))
            .collect();
        enclosures.sort_unstable();
        enclosures.dedup();
        assert_eq!(enclosures.len(), 12 * 40, "no two appliances share a name");
        assert_eq!(Site::default().enclosure(17), "SGH817YECA");
        assert_eq!(
            Site::synergy(1).enclosure_name,
            Site::default().enclosure_name
        );
    }
}

//! Realistic alert content for generated alerts, taken from real appliance alerts
//! (`tests/fixtures/oneview/real_appliance_alerts_syslog.txt`, a lab Synergy's alerts as the
//! prometheus-grafana connector logs them).

use std::sync::{Arc, OnceLock};

use crate::model::Severity;

const FIXTURE: &str =
    include_str!("../../../tests/fixtures/oneview/real_appliance_alerts_syslog.txt");

/// The content of one real alert.
#[derive(Debug, Clone)]
pub struct Template {
    pub severity: Severity,
    pub resource_category: Arc<str>,
    pub resource_name: Arc<str>,
    pub health_category: Arc<str>,
    pub description: Arc<str>,
    pub corrective_action: Arc<str>,
    pub alert_type_id: Arc<str>,
    pub physical_resource_type: Arc<str>,
}

/// Alert type ids for the fixture's alerts, by health category. The syslog form does not carry
/// them; these follow the shapes OneView uses (`Trap.*`, `hpris.*`, `crm.*`).
fn alert_type_for(health_category: &str, resource_category: &str) -> String {
    match health_category {
        "ServerBlade" => "Trap.cpqHo2GenericTrap".to_owned(),
        "BIOS" => "hpris.iLOEvents.1.0.BiosErrorState".to_owned(),
        "Operational" => "crm.logicalEnclosure.ipv4AddressMismatch".to_owned(),
        "Security" => "appliance.secureDataAtRest.keyOnDisk".to_owned(),
        _ => format!("crm.{resource_category}.{health_category}"),
    }
}

fn physical_type(resource_category: &str) -> &str {
    match resource_category {
        "server-hardware" => "server-hardware",
        "sas-interconnects" => "sas-interconnects",
        "logical-enclosures" => "enclosures",
        _ => "appliance",
    }
}

/// Splits "description.Corrective action" where the two were glued without a space.
fn split_text(text: &str) -> (String, String) {
    let b = text.as_bytes();
    for i in 0..b.len().saturating_sub(1) {
        if b[i] == b'.' && b[i + 1].is_ascii_uppercase() {
            return (
                text[..=i].trim().to_owned(),
                text[i + 1..].trim().to_owned(),
            );
        }
    }
    (text.trim().to_owned(), String::new())
}

/// Parses `<prio> time ip oneview category [name] [id|health|state|...] [text]` records; a
/// record may continue on the next line.
pub fn parse_fixture(text: &str) -> Vec<Template> {
    let mut records: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with('<') || records.is_empty() {
            records.push(line.to_owned());
        } else if let Some(last) = records.last_mut() {
            last.push('\n');
            last.push_str(line);
        }
    }
    records.iter().filter_map(|r| parse_record(r)).collect()
}

fn parse_record(r: &str) -> Option<Template> {
    let prio: u8 = r
        .strip_prefix('<')?
        .split('>')
        .next()?
        .trim()
        .parse()
        .ok()?;
    let mut words = r.splitn(6, ' ');
    let _prio = words.next()?;
    let _time = words.next()?;
    let _ip = words.next()?;
    let _app = words.next()?;
    let category = words.next()?;
    let rest = words.next()?;
    let mut groups = Vec::new();
    let mut rest = rest;
    while let Some(open) = rest.find('[') {
        // The last group (the text) may contain brackets; it runs to the final ']'.
        let close = if groups.len() == 2 {
            rest.rfind(']')?
        } else {
            open + rest[open..].find(']')?
        };
        groups.push(rest[open + 1..close].to_owned());
        rest = &rest[close + 1..];
    }
    let [name, meta, text] = <[String; 3]>::try_from(groups).ok()?;
    let health = meta.split('|').nth(1).unwrap_or("Operational").to_owned();
    let (description, corrective) = split_text(&text);
    let severity = if prio <= 3 {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(Template {
        severity,
        alert_type_id: Arc::from(alert_type_for(&health, category)),
        physical_resource_type: Arc::from(physical_type(category)),
        resource_category: Arc::from(category),
        resource_name: Arc::from(name),
        health_category: Arc::from(health),
        description: Arc::from(description),
        corrective_action: Arc::from(corrective),
    })
}

/// The templates from the fixture (parsed once).
pub fn templates() -> &'static [Template] {
    static T: OnceLock<Vec<Template>> = OnceLock::new();
    T.get_or_init(|| {
        let t = parse_fixture(FIXTURE);
        if t.is_empty() {
            // The fixture is compiled in; this only guards against an edited, empty file.
            vec![Template {
                severity: Severity::Warning,
                resource_category: Arc::from("server-hardware"),
                resource_name: Arc::from("SGH817YECA, bay 5"),
                health_category: Arc::from("ServerBlade"),
                description: Arc::from("The server hardware has a warning internal health status."),
                corrective_action: Arc::from("Check the iLO Integrated Management Log."),
                alert_type_id: Arc::from("Trap.cpqHo2GenericTrap"),
                physical_resource_type: Arc::from("server-hardware"),
            }]
        } else {
            t
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_fixture_alerts_parse() {
        let t = parse_fixture(FIXTURE);
        assert_eq!(t.len(), 5, "{t:#?}");
        assert_eq!(&*t[0].resource_name, "SGH817YECA, bay 5");
        assert_eq!(&*t[0].health_category, "ServerBlade");
        assert!(
            t[0].description.ends_with("health status."),
            "{}",
            t[0].description
        );
        assert!(t[0].corrective_action.starts_with("Check the iLO"));
        assert_eq!(t[3].severity, Severity::Critical);
        assert!(t[3].description.contains('\n'));
        assert!(t[3].corrective_action.starts_with("Retry the operation"));
        assert!(t[2].description.contains("172.168.100.212"));
    }
}

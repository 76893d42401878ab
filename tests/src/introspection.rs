//! The documented introspection XML (`dbus/org.enigm.Trust1.xml`) from what trustd serves.
//!
//! trustd serves its interfaces with each member's Rust doc comment as an XML comment before
//! it. The committed file carries the same text as `org.gtk.GDBus.DocString` annotations,
//! the form gdbus-codegen (and tools built on GDBus introspection) read, plus one sentence
//! per interface saying what it is and who may call it. [`document`] makes the one from the
//! other, so the Rust doc comments stay the single source.

/// The annotation gdbus-codegen reads for documentation (gio's `gdbus-codegen(1)`).
pub const DOC_STRING: &str = "org.gtk.GDBus.DocString";

/// What each interface is for and who may call it (the bus policy and trustd enforce it).
pub const INTERFACE_DOCS: &[(&str, &str)] = &[
    (
        "org.enigm.Trust1.Audit",
        "The tamper-evident audit log: its last records, a full check, signed checkpoints, acknowledging recorded damage. Admins only (root or trustd-admin).",
    ),
    (
        "org.enigm.Trust1.Device",
        "The device's management lifecycle, changed only by signed commands bound to this device; TPM credential activation. Admins only.",
    ),
    (
        "org.enigm.Trust1.Launcher",
        "Whether an app may start now, and with which confinement; what the launcher then did. Everyone.",
    ),
    (
        "org.enigm.Trust1.Policy",
        "Signed inputs: policy bundles, intel feeds and trust-root rotations, each verified before it is put in force; the policy in force. Admins only.",
    ),
    (
        "org.enigm.Trust1.Posture",
        "The device's posture: level, reasons, enforcement, mode, lifecycle, audit head; one PropertiesChanged per transition; device handles and signed posture reports. Everyone.",
    ),
    (
        "org.enigm.Trust1.Privacy",
        "Privacy mode. Turning it on: everyone; off: admins, or users when the policy allows.",
    ),
    (
        "org.enigm.Trust1.Setup",
        "The setup steps the policy requires. trustd-setup members and admins.",
    ),
];

/// `text` as an XML attribute value.
fn attr(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn annotation(indent: usize, doc: &str) -> String {
    format!(
        "{:indent$}<annotation name=\"{DOC_STRING}\" value=\"{}\"/>\n",
        "",
        attr(doc)
    )
}

/// The `<interface>` elements of `lines` (as [`our_interfaces`](crate) cuts them from an
/// introspection document, untrimmed), each comment before an interface, method, signal or
/// property turned into a DocString annotation inside it (a self-closing element is opened
/// for it). Interfaces get their sentence from [`INTERFACE_DOCS`] when no comment precedes
/// them. Lines that are neither pass through unchanged.
pub fn document(lines: &str) -> String {
    let mut out = String::new();
    let mut pending: Option<String> = None;
    let mut comment: Option<Vec<String>> = None;
    for raw in lines.lines() {
        let line = raw.trim();
        let indent = raw.len() - raw.trim_start().len();
        if let Some(c) = comment.as_mut() {
            let (text, end) = match line.strip_suffix("-->") {
                Some(t) => (t, true),
                None => (line, false),
            };
            c.push(text.trim().to_owned());
            if end {
                pending = comment.take().map(|c| {
                    c.iter()
                        .filter(|l| !l.is_empty())
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(" ")
                });
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("<!--") {
            match rest.strip_suffix("-->") {
                Some(one) => pending = Some(one.trim().to_owned()),
                None => comment = Some(vec![rest.trim().to_owned()]),
            }
            continue;
        }
        let element = ["<interface ", "<method ", "<signal ", "<property "]
            .iter()
            .find(|p| line.starts_with(**p))
            .map(|p| &p[1..p.len() - 1]);
        let Some(element) = element else {
            out.push_str(raw);
            out.push('\n');
            continue;
        };
        let doc = pending.take().or_else(|| {
            (element == "interface")
                .then(|| {
                    INTERFACE_DOCS
                        .iter()
                        .find(|(name, _)| line.contains(&format!("name=\"{name}\"")))
                        .map(|(_, d)| (*d).to_owned())
                })
                .flatten()
        });
        let Some(doc) = doc else {
            out.push_str(raw);
            out.push('\n');
            continue;
        };
        match line.strip_suffix("/>") {
            Some(open) => {
                out.push_str(&format!("{:indent$}{}>\n", "", open.trim_end()));
                out.push_str(&annotation(indent + 2, &doc));
                out.push_str(&format!("{:indent$}</{element}>\n", ""));
            }
            None => {
                out.push_str(raw);
                out.push('\n');
                out.push_str(&annotation(indent + 2, &doc));
            }
        }
    }
    out
}

/// The documentation text an introspection document gives `element name="member"`, from its
/// DocString annotations (unescaped), in document order: (element, name, doc).
pub fn doc_strings(xml: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in xml.lines().map(str::trim) {
        for element in ["interface", "method", "signal", "property"] {
            if let Some(rest) = line.strip_prefix(&format!("<{element} name=\"")) {
                let name = rest.split('"').next().unwrap_or_default().to_owned();
                current = Some((element.to_owned(), name));
            }
        }
        if let Some(rest) =
            line.strip_prefix(&format!("<annotation name=\"{DOC_STRING}\" value=\""))
            && let (Some(value), Some((e, n))) = (rest.strip_suffix("\"/>"), current.as_ref())
        {
            let doc = value
                .replace("&quot;", "\"")
                .replace("&gt;", ">")
                .replace("&lt;", "<")
                .replace("&amp;", "&");
            out.push((e.clone(), n.clone(), doc));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_become_doc_strings_and_self_closing_elements_open() {
        let served = "  <interface name=\"org.enigm.Trust1.Setup\">\n    <!--\n     Mark a step\n     done & \"kept\".\n     -->\n    <method name=\"CompleteStep\">\n      <arg name=\"step\" type=\"s\" direction=\"in\"/>\n    </method>\n    <!--\n     `trusted` or not.\n     -->\n    <property name=\"Level\" type=\"s\" access=\"read\"/>\n  </interface>\n";
        let doc = document(served);
        assert!(!doc.contains("<!--"), "{doc}");
        assert!(
            doc.contains("    <property name=\"Level\" type=\"s\" access=\"read\">\n      <annotation name=\"org.gtk.GDBus.DocString\" value=\"`trusted` or not.\"/>\n    </property>\n"),
            "{doc}"
        );
        let docs = doc_strings(&doc);
        assert_eq!(docs.len(), 3, "{docs:?}");
        assert_eq!(docs[0].0, "interface");
        assert!(docs[0].2.contains("trustd-setup"), "{docs:?}");
        assert_eq!(
            docs[1],
            (
                "method".to_owned(),
                "CompleteStep".to_owned(),
                "Mark a step done & \"kept\".".to_owned()
            )
        );
    }
}

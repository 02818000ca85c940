//! Node configuration as data forms: `pubsub#node_config` (XEP-0060 §8.2,
//! through XEP-0004) and publish options (XEP-0223), whose fields are
//! preconditions a node must meet before an item is published to it.

use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::Element;
use crate::model::state::pubsub::{AccessModel, NodeConfig, SendLast};

pub const DATA: &str = "jabber:x:data";
pub const NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
pub const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// The fields of a submitted form other than FORM_TYPE, with their values.
fn fields(x: &Element) -> Vec<(String, Vec<String>)> {
    x.elements()
        .filter(|f| f.name == "field")
        .filter_map(|f| {
            let var = f.attr("var")?.to_string();
            let values = f
                .elements()
                .filter(|v| v.name == "value")
                .map(|v| v.text().trim().to_string())
                .collect();
            (var != "FORM_TYPE").then_some((var, values))
        })
        .collect()
}

fn not_acceptable(text: String) -> StanzaError {
    StanzaError::with_text(StanzaCondition::NotAcceptable, text)
}

fn boolean(var: &str, v: &str) -> Result<bool, StanzaError> {
    match v {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(not_acceptable(format!("{var} must be a boolean"))),
    }
}

/// `config` changed by the fields of form `x`; `cap` is what `max`
/// means for `pubsub#max_items`. Fields this server does not keep are
/// ignored; a value of the wrong kind is refused and nothing changes.
pub fn apply(config: &NodeConfig, x: &Element, cap: u32) -> Result<NodeConfig, StanzaError> {
    let mut c = config.clone();
    for (var, values) in fields(x) {
        let v = values.first().map(String::as_str).unwrap_or_default();
        match var.as_str() {
            "pubsub#access_model" => {
                c.access_model = AccessModel::parse(v)
                    .ok_or_else(|| not_acceptable(format!("access model {v} is not offered")))?
            }
            "pubsub#max_items" => {
                c.max_items = if v == "max" {
                    cap
                } else {
                    v.parse::<u32>()
                        .map_err(|_| not_acceptable("pubsub#max_items must be a number".into()))?
                        .min(cap)
                }
            }
            "pubsub#persist_items" => c.persist_items = boolean(&var, v)?,
            "pubsub#notify_retract" => c.notify_retract = boolean(&var, v)?,
            "pubsub#notify_delete" => c.notify_delete = boolean(&var, v)?,
            "pubsub#send_last_published_item" => {
                c.send_last_published_item = SendLast::parse(v)
                    .ok_or_else(|| not_acceptable(format!("send_last_published_item {v}")))?
            }
            "pubsub#title" => c.title = (!v.is_empty()).then(|| v.to_string()),
            _ => {}
        }
    }
    Ok(c)
}

/// Publish options (XEP-0223 §3): does `config` already meet every field
/// of `x`? A field this server does not keep is a precondition it cannot
/// meet.
pub fn met(config: &NodeConfig, x: &Element, cap: u32) -> bool {
    let wanted = match apply(config, x, cap) {
        Ok(w) => w,
        Err(_) => return false,
    };
    let known = fields(x).iter().all(|(var, _)| {
        matches!(
            var.as_str(),
            "pubsub#access_model"
                | "pubsub#max_items"
                | "pubsub#persist_items"
                | "pubsub#notify_retract"
                | "pubsub#notify_delete"
                | "pubsub#send_last_published_item"
                | "pubsub#title"
        )
    });
    known && &wanted == config
}

/// The form of a node's configuration (§8.2.1).
pub fn form(config: &NodeConfig, cap: u32) -> Element {
    let field = |var: &str, kind: &str, value: String| {
        Element::new("field", DATA)
            .with_attr("var", var)
            .with_attr("type", kind)
            .with_child(Element::new("value", DATA).with_text(value))
    };
    let bool_s = |b: bool| if b { "1" } else { "0" }.to_string();
    let mut access = field(
        "pubsub#access_model",
        "list-single",
        config.access_model.as_str().into(),
    );
    for m in ["open", "presence", "roster", "whitelist"] {
        access.push_child(
            Element::new("option", DATA).with_child(Element::new("value", DATA).with_text(m)),
        );
    }
    let mut send_last = field(
        "pubsub#send_last_published_item",
        "list-single",
        config.send_last_published_item.as_str().into(),
    );
    for m in ["never", "on_sub", "on_sub_and_presence"] {
        send_last.push_child(
            Element::new("option", DATA).with_child(Element::new("value", DATA).with_text(m)),
        );
    }
    Element::new("x", DATA)
        .with_attr("type", "form")
        .with_child(field("FORM_TYPE", "hidden", NODE_CONFIG.into()))
        .with_child(access)
        .with_child(
            field(
                "pubsub#max_items",
                "text-single",
                config.max_items.to_string(),
            )
            .with_attr("label", format!("Items kept (at most {cap}, or max)")),
        )
        .with_child(field(
            "pubsub#persist_items",
            "boolean",
            bool_s(config.persist_items),
        ))
        .with_child(field(
            "pubsub#notify_retract",
            "boolean",
            bool_s(config.notify_retract),
        ))
        .with_child(field(
            "pubsub#notify_delete",
            "boolean",
            bool_s(config.notify_delete),
        ))
        .with_child(send_last)
        .with_child(field(
            "pubsub#title",
            "text-single",
            config.title.clone().unwrap_or_default(),
        ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::xml::parse_fragment;

    fn options(fields: &str) -> Element {
        parse_fragment(&format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>{PUBLISH_OPTIONS}</value></field>{fields}</x>"
        ))
        .expect("parses")
    }

    #[test]
    fn publish_options_are_met_only_by_a_node_configured_so() {
        let open = options(
            "<field var='pubsub#access_model'><value>open</value></field>\
             <field var='pubsub#max_items'><value>max</value></field>",
        );
        let default = NodeConfig::default();
        assert!(!met(&default, &open, 256));
        let c = apply(&default, &open, 256).expect("applies");
        assert_eq!(c.access_model, AccessModel::Open);
        assert_eq!(c.max_items, 256);
        assert!(met(&c, &open, 256));
        // A field this server does not keep cannot be met.
        let odd = options("<field var='pubsub#deliver_payloads'><value>0</value></field>");
        assert!(!met(&c, &odd, 256));
    }

    #[test]
    fn a_value_of_the_wrong_kind_is_refused() {
        let bad = options("<field var='pubsub#persist_items'><value>maybe</value></field>");
        let err = apply(&NodeConfig::default(), &bad, 256).expect_err("refused");
        assert_eq!(err.condition, StanzaCondition::NotAcceptable);
        let bad = options("<field var='pubsub#access_model'><value>authorize</value></field>");
        assert!(apply(&NodeConfig::default(), &bad, 256).is_err());
    }
}

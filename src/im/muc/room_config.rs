//! A room's configuration and its XEP-0004 form (XEP-0045 §10.2, the
//! `muc#roomconfig` FORM_TYPE of §15.5.3), and the `muc#roominfo` form of
//! disco#info (§6.4, §15.5.4).

use super::DATA;
use crate::base::xml::Element;

/// Who may see occupants' real JIDs (`muc#roomconfig_whois`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Whois {
    Moderators,
    Anyone,
}

/// Who may send private messages (`muc#roomconfig_allowpm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AllowPm {
    Anyone,
    Participants,
    Moderators,
    Nobody,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub persistent: bool,
    pub public: bool,
    pub members_only: bool,
    pub moderated: bool,
    pub password: Option<String>,
    pub whois: Whois,
    pub max_users: usize,
    pub history_length: usize,
    pub allow_pm: AllowPm,
    pub change_subject: bool,
    pub allow_invites: bool,
    pub archiving: bool,
}

impl RoomConfig {
    /// An instant room's configuration (§10.1.2).
    pub fn instant(max_users: usize, history: usize, archiving: bool) -> RoomConfig {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: None,
            whois: Whois::Moderators,
            max_users,
            history_length: history,
            allow_pm: AllowPm::Anyone,
            change_subject: false,
            allow_invites: true,
            archiving,
        }
    }

    /// The form an owner fills in (§10.2, type `form`).
    pub fn form(&self, limit_users: usize, limit_history: usize) -> Element {
        let mut x = Element::new("x", DATA).with_attr("type", "form");
        x.push_child(Element::new("title", DATA).with_text("Room configuration"));
        x.push_child(hidden(
            "FORM_TYPE",
            "http://jabber.org/protocol/muc#roomconfig",
        ));
        x.push_child(field(
            "muc#roomconfig_roomname",
            "text-single",
            "Name",
            &[&self.name],
        ));
        x.push_child(field(
            "muc#roomconfig_roomdesc",
            "text-single",
            "Description",
            &[&self.description],
        ));
        x.push_child(boolean(
            "muc#roomconfig_persistentroom",
            "Persistent",
            self.persistent,
        ));
        x.push_child(boolean(
            "muc#roomconfig_publicroom",
            "Listed in the directory",
            self.public,
        ));
        x.push_child(boolean(
            "muc#roomconfig_membersonly",
            "Members only",
            self.members_only,
        ));
        x.push_child(boolean(
            "muc#roomconfig_moderatedroom",
            "Moderated",
            self.moderated,
        ));
        x.push_child(boolean(
            "muc#roomconfig_passwordprotectedroom",
            "Password protected",
            self.password.is_some(),
        ));
        x.push_child(field(
            "muc#roomconfig_roomsecret",
            "text-private",
            "Password",
            &[self.password.as_deref().unwrap_or("")],
        ));
        let whois = match self.whois {
            Whois::Moderators => "moderators",
            Whois::Anyone => "anyone",
        };
        x.push_child(list(
            "muc#roomconfig_whois",
            "Who may see real JIDs",
            whois,
            &["moderators", "anyone"],
        ));
        let users = self.max_users.to_string();
        x.push_child(field(
            "muc#roomconfig_maxusers",
            "text-single",
            &format!("Maximum occupants (at most {limit_users})"),
            &[&users],
        ));
        let history = self.history_length.to_string();
        x.push_child(field(
            "muc#roomconfig_historylength",
            "text-single",
            &format!("Messages in history (at most {limit_history})"),
            &[&history],
        ));
        let pm = match self.allow_pm {
            AllowPm::Anyone => "anyone",
            AllowPm::Participants => "participants",
            AllowPm::Moderators => "moderators",
            AllowPm::Nobody => "none",
        };
        x.push_child(list(
            "muc#roomconfig_allowpm",
            "Who may send private messages",
            pm,
            &["anyone", "participants", "moderators", "none"],
        ));
        x.push_child(boolean(
            "muc#roomconfig_changesubject",
            "Occupants may change the subject",
            self.change_subject,
        ));
        x.push_child(boolean(
            "muc#roomconfig_allowinvites",
            "Occupants may invite",
            self.allow_invites,
        ));
        x.push_child(boolean(
            "muc#roomconfig_enablearchiving",
            "Archive messages",
            self.archiving,
        ));
        x
    }

    /// Apply a submitted form (`type='submit'`); a field of the wrong type
    /// or out of range refuses the whole form and changes nothing.
    pub fn apply(
        &self,
        form: &Element,
        limit_users: usize,
        limit_history: usize,
    ) -> Result<RoomConfig, String> {
        let mut c = self.clone();
        let mut password_protected = None;
        for f in form.elements().filter(|e| e.is("field", DATA)) {
            let Some(var) = f.attr("var") else { continue };
            let values: Vec<String> = f
                .elements()
                .filter(|v| v.is("value", DATA))
                .map(|v| v.text())
                .collect();
            let one = values.first().map(String::as_str).unwrap_or("");
            let bool_of = |v: &str| -> Result<bool, String> {
                match v {
                    "1" | "true" => Ok(true),
                    "0" | "false" => Ok(false),
                    _ => Err(format!("{var}: expected a boolean, got {v:?}")),
                }
            };
            let number_of = |v: &str, most: usize| -> Result<usize, String> {
                match v.trim().parse::<usize>() {
                    Ok(n) if n <= most => Ok(n),
                    Ok(_) => Err(format!("{var}: at most {most}")),
                    Err(_) => Err(format!("{var}: expected a number, got {v:?}")),
                }
            };
            match var {
                "FORM_TYPE" if one != "http://jabber.org/protocol/muc#roomconfig" => {
                    return Err(format!("FORM_TYPE {one:?} is not muc#roomconfig"));
                }
                "muc#roomconfig_roomname" => c.name = one.to_string(),
                "muc#roomconfig_roomdesc" => c.description = one.to_string(),
                "muc#roomconfig_persistentroom" => c.persistent = bool_of(one)?,
                "muc#roomconfig_publicroom" => c.public = bool_of(one)?,
                "muc#roomconfig_membersonly" => c.members_only = bool_of(one)?,
                "muc#roomconfig_moderatedroom" => c.moderated = bool_of(one)?,
                "muc#roomconfig_passwordprotectedroom" => password_protected = Some(bool_of(one)?),
                "muc#roomconfig_roomsecret" => {
                    c.password = Some(one.to_string()).filter(|p| !p.is_empty())
                }
                "muc#roomconfig_whois" => {
                    c.whois = match one {
                        "moderators" => Whois::Moderators,
                        "anyone" => Whois::Anyone,
                        _ => return Err(format!("{var}: {one:?} is not an option")),
                    }
                }
                "muc#roomconfig_maxusers" => {
                    c.max_users = match one {
                        "none" | "" => limit_users,
                        n => number_of(n, limit_users)?.max(1),
                    }
                }
                "muc#roomconfig_historylength" | "muc#maxhistoryfetch" => {
                    c.history_length = number_of(one, limit_history)?
                }
                "muc#roomconfig_allowpm" => {
                    c.allow_pm = match one {
                        "anyone" => AllowPm::Anyone,
                        "participants" => AllowPm::Participants,
                        "moderators" => AllowPm::Moderators,
                        "none" => AllowPm::Nobody,
                        _ => return Err(format!("{var}: {one:?} is not an option")),
                    }
                }
                "muc#roomconfig_changesubject" => c.change_subject = bool_of(one)?,
                "muc#roomconfig_allowinvites" => c.allow_invites = bool_of(one)?,
                "muc#roomconfig_enablearchiving" | "mam" => c.archiving = bool_of(one)?,
                // Fields other servers offer and this one does not keep.
                _ => {}
            }
        }
        if password_protected == Some(false) {
            c.password = None;
        }
        if password_protected == Some(true) && c.password.is_none() {
            return Err("a password-protected room needs muc#roomconfig_roomsecret".into());
        }
        Ok(c)
    }

    /// disco#info features that describe the room (§15.2.2).
    pub fn features(&self) -> Vec<&'static str> {
        vec![
            if self.public {
                "muc_public"
            } else {
                "muc_hidden"
            },
            if self.members_only {
                "muc_membersonly"
            } else {
                "muc_open"
            },
            if self.moderated {
                "muc_moderated"
            } else {
                "muc_unmoderated"
            },
            match self.whois {
                Whois::Anyone => "muc_nonanonymous",
                Whois::Moderators => "muc_semianonymous",
            },
            if self.password.is_some() {
                "muc_passwordprotected"
            } else {
                "muc_unsecured"
            },
            if self.persistent {
                "muc_persistent"
            } else {
                "muc_temporary"
            },
        ]
    }

    /// The `muc#roominfo` form (§15.5.4).
    pub fn info_form(&self, occupants: usize, subject: &str) -> Element {
        let mut x = Element::new("x", DATA).with_attr("type", "result");
        x.push_child(hidden(
            "FORM_TYPE",
            "http://jabber.org/protocol/muc#roominfo",
        ));
        x.push_child(field(
            "muc#roominfo_description",
            "text-single",
            "Description",
            &[&self.description],
        ));
        x.push_child(field(
            "muc#roominfo_occupants",
            "text-single",
            "Occupants",
            &[&occupants.to_string()],
        ));
        x.push_child(field(
            "muc#roominfo_subject",
            "text-single",
            "Subject",
            &[subject],
        ));
        x.push_child(field(
            "muc#roomconfig_changesubject",
            "boolean",
            "Occupants may change the subject",
            &[if self.change_subject { "1" } else { "0" }],
        ));
        x
    }
}

fn field(var: &str, kind: &str, label: &str, values: &[&str]) -> Element {
    let mut f = Element::new("field", DATA)
        .with_attr("var", var)
        .with_attr("type", kind)
        .with_attr("label", label);
    for v in values {
        f.push_child(Element::new("value", DATA).with_text(*v));
    }
    f
}

fn hidden(var: &str, value: &str) -> Element {
    Element::new("field", DATA)
        .with_attr("var", var)
        .with_attr("type", "hidden")
        .with_child(Element::new("value", DATA).with_text(value))
}

fn boolean(var: &str, label: &str, value: bool) -> Element {
    field(var, "boolean", label, &[if value { "1" } else { "0" }])
}

fn list(var: &str, label: &str, value: &str, options: &[&str]) -> Element {
    let mut f = field(var, "list-single", label, &[value]);
    for o in options {
        f.push_child(
            Element::new("option", DATA)
                .with_attr("label", *o)
                .with_child(Element::new("value", DATA).with_text(*o)),
        );
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(fields: &str) -> Element {
        crate::base::xml::parse_fragment(&format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>{fields}</x>"
        ))
        .expect("xml")
    }

    #[test]
    fn a_submitted_form_changes_the_fields_it_names() {
        let c = RoomConfig::instant(100, 20, true);
        let n = c
            .apply(
                &form("<field var='muc#roomconfig_roomname'><value>Lobby</value></field><field var='muc#roomconfig_membersonly'><value>true</value></field><field var='muc#roomconfig_maxusers'><value>30</value></field><field var='muc#roomconfig_whois'><value>anyone</value></field>"),
                100,
                20,
            )
            .expect("valid");
        assert_eq!(n.name, "Lobby");
        assert!(n.members_only);
        assert_eq!(n.max_users, 30);
        assert_eq!(n.whois, Whois::Anyone);
        assert!(!n.persistent);
    }

    #[test]
    fn wrong_types_and_out_of_range_values_refuse_the_form() {
        let c = RoomConfig::instant(100, 20, true);
        for bad in [
            "<field var='muc#roomconfig_persistentroom'><value>maybe</value></field>",
            "<field var='muc#roomconfig_maxusers'><value>lots</value></field>",
            "<field var='muc#roomconfig_maxusers'><value>101</value></field>",
            "<field var='muc#roomconfig_whois'><value>everybody</value></field>",
            "<field var='muc#roomconfig_passwordprotectedroom'><value>1</value></field>",
        ] {
            assert!(c.apply(&form(bad), 100, 20).is_err(), "{bad}");
        }
    }
}

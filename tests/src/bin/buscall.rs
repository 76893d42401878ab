//! buscall: make D-Bus calls to trustd as whoever runs it, and print one JSON line per call.
//! The authorization tests run it under `setpriv` as other users and groups.
//!
//! ```text
//! buscall ADDRESS CALL...
//!   CALL = "Iface.Member [ARG]"   Iface: Posture, Privacy, Policy, Setup, Audit, Introspectable
//!          "Posture.get:NAME"     read one property; "Posture.GetAll" reads them all
//!   ARG  = b:true | s:TEXT | u:N | t:N | ay@FILE (the file's bytes) | ay#N (N zero bytes)
//!          | ss:TEXT (TEXT and "") | sbs:TEXT (TEXT, true, "test")
//!          | ayay#N (two arrays of N zero bytes)
//! ```
//! Output: `{"call":..., "ok":true, "value":...}` or `{"call":..., "ok":false,
//! "error":NAME, "message":MSG}`. Exit 2 on usage errors, 3 if the bus cannot be reached.

use std::process::ExitCode;

use serde_json::json;
use zbus::{Connection, Variant};

const DEST: &str = "org.enigm.Trust1";
const PATH: &str = "/org/enigm/Trust1";

fn iface(short: &str) -> String {
    match short {
        "Introspectable" => "org.freedesktop.DBus.Introspectable".into(),
        "Properties" => "org.freedesktop.DBus.Properties".into(),
        s if s.contains('.') => s.into(),
        s => format!("org.enigm.Trust1.{s}"),
    }
}

async fn call(conn: &Connection, spec: &str) -> Result<String, zbus::Error> {
    let (target, arg) = spec.split_once(' ').unwrap_or((spec, ""));
    let (short, member) = target
        .split_once('.')
        .ok_or_else(|| zbus::Error::Failure(format!("bad call {spec:?}")))?;
    let iface = iface(short);
    let reply = if let Some(prop) = member.strip_prefix("get:") {
        conn.call_method(
            Some(DEST),
            PATH,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(iface.as_str(), prop),
        )
        .await?
    } else if member == "GetAll" {
        conn.call_method(
            Some(DEST),
            PATH,
            Some("org.freedesktop.DBus.Properties"),
            "GetAll",
            &(iface.as_str(),),
        )
        .await?
    } else if let Some(v) = arg.strip_prefix("b:") {
        conn.call_method(
            Some(DEST),
            PATH,
            Some(iface.as_str()),
            member,
            &(v == "true",),
        )
        .await?
    } else if let Some(v) = arg.strip_prefix("s:") {
        conn.call_method(Some(DEST), PATH, Some(iface.as_str()), member, &(v,))
            .await?
    } else if let Some(v) = arg.strip_prefix("ss:") {
        conn.call_method(Some(DEST), PATH, Some(iface.as_str()), member, &(v, ""))
            .await?
    } else if let Some(v) = arg.strip_prefix("sbs:") {
        conn.call_method(
            Some(DEST),
            PATH,
            Some(iface.as_str()),
            member,
            &(v, true, "test"),
        )
        .await?
    } else if let Some(v) = arg.strip_prefix("u:") {
        let n: u32 = v
            .parse()
            .map_err(|_| zbus::Error::Failure(format!("bad u32 {v:?}")))?;
        conn.call_method(Some(DEST), PATH, Some(iface.as_str()), member, &(n,))
            .await?
    } else if let Some(v) = arg.strip_prefix("t:") {
        let n: u64 = v
            .parse()
            .map_err(|_| zbus::Error::Failure(format!("bad u64 {v:?}")))?;
        conn.call_method(Some(DEST), PATH, Some(iface.as_str()), member, &(n,))
            .await?
    } else if let Some(f) = arg.strip_prefix("ay@") {
        let bytes = std::fs::read(f).map_err(|e| zbus::Error::Failure(format!("{f}: {e}")))?;
        conn.call_method(Some(DEST), PATH, Some(iface.as_str()), member, &(bytes,))
            .await?
    } else if let Some(n) = arg.strip_prefix("ayay#") {
        let n: usize = n
            .parse()
            .map_err(|_| zbus::Error::Failure(format!("bad size {n:?}")))?;
        conn.call_method(
            Some(DEST),
            PATH,
            Some(iface.as_str()),
            member,
            &(vec![0u8; n], vec![0u8; n]),
        )
        .await?
    } else if let Some(n) = arg.strip_prefix("ay#") {
        let n: usize = n
            .parse()
            .map_err(|_| zbus::Error::Failure(format!("bad size {n:?}")))?;
        conn.call_method(
            Some(DEST),
            PATH,
            Some(iface.as_str()),
            member,
            &(vec![0u8; n],),
        )
        .await?
    } else {
        conn.call_method(Some(DEST), PATH, Some(iface.as_str()), member, &())
            .await?
    };
    let body = reply.body();
    let sig = body.signature().to_string();
    if sig.is_empty() {
        return Ok(String::new());
    }
    if member.starts_with("get:") {
        let v: Variant<'_> = body.deserialize()?;
        return Ok(v.to_string());
    }
    Ok(format!("({sig})"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((address, calls)) = args.split_first() else {
        eprintln!("usage: buscall ADDRESS CALL...");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("buscall: {e}");
            return ExitCode::from(3);
        }
    };
    rt.block_on(async {
        // A call trustd drops unread (over a budget) fails after 20 s instead of hanging the
        // test that made it.
        let conn = match zbus::connection::Builder::address(address.as_str())
            .method_timeout(std::time::Duration::from_secs(20))
            .build()
            .await
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("buscall: {address}: {e}");
                return ExitCode::from(3);
            }
        };
        for spec in calls {
            let line = match call(&conn, spec).await {
                Ok(v) => json!({"call": spec, "ok": true, "value": v}),
                Err(zbus::Error::MethodError(name, msg, _)) => json!({
                    "call": spec, "ok": false, "error": name.as_str(), "message": msg
                }),
                Err(zbus::Error::FDO(e)) => json!({
                    "call": spec, "ok": false, "error": zbus::DBusError::name(e.as_ref()).as_str(),
                    "message": zbus::DBusError::description(e.as_ref())
                }),
                Err(e) => json!({"call": spec, "ok": false, "error": "transport", "message": e.to_string()}),
            };
            println!("{line}");
        }
        ExitCode::SUCCESS
    })
}

//! The UDisks2 D-Bus interfaces this crate uses, and a snapshot of UDisks2's block devices in
//! plain Rust types. zbus types stay inside this module and `manager`.

use std::collections::HashMap;
use std::path::PathBuf;

use burrow_core::disk::DiskError;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

pub(crate) const SERVICE: &str = "org.freedesktop.UDisks2";
const ROOT: &str = "/org/freedesktop/UDisks2";
const IF_BLOCK: &str = "org.freedesktop.UDisks2.Block";
const IF_FILESYSTEM: &str = "org.freedesktop.UDisks2.Filesystem";
const IF_ENCRYPTED: &str = "org.freedesktop.UDisks2.Encrypted";
const IF_DRIVE: &str = "org.freedesktop.UDisks2.Drive";

pub(crate) type Options<'a> = HashMap<&'a str, Value<'a>>;

#[zbus::proxy(
    interface = "org.freedesktop.UDisks2.Encrypted",
    default_service = "org.freedesktop.UDisks2"
)]
pub(crate) trait Encrypted {
    fn unlock(&self, passphrase: &str, options: Options<'_>) -> zbus::Result<OwnedObjectPath>;
    fn lock(&self, options: Options<'_>) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.UDisks2.Filesystem",
    default_service = "org.freedesktop.UDisks2"
)]
pub(crate) trait Filesystem {
    fn mount(&self, options: Options<'_>) -> zbus::Result<String>;
    fn unmount(&self, options: Options<'_>) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.UDisks2.Drive",
    default_service = "org.freedesktop.UDisks2"
)]
pub(crate) trait Drive {
    fn power_off(&self, options: Options<'_>) -> zbus::Result<()>;
}

/// One UDisks2 block object, with what the adapter needs from its interfaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BlockInfo {
    pub path: String,
    pub device: PathBuf,
    pub id_uuid: String,
    pub id_type: String,
    pub crypto_backing: Option<String>,
    pub drive: Option<String>,
    /// `Some` if the object has the Encrypted interface; inner `Some` once unlocked.
    pub cleartext: Option<Option<String>>,
    /// `Some` if the object has the Filesystem interface.
    pub mount_points: Option<Vec<PathBuf>>,
}

impl BlockInfo {
    pub fn is_luks(&self) -> bool {
        self.cleartext.is_some() || self.id_type == "crypto_LUKS"
    }
    pub fn first_mount(&self) -> Option<PathBuf> {
        self.mount_points.as_ref()?.first().cloned()
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct DriveInfo {
    pub can_power_off: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub blocks: Vec<BlockInfo>,
    pub drives: HashMap<String, DriveInfo>,
}

impl Snapshot {
    pub fn by_uuid(&self, uuid: &str) -> Option<&BlockInfo> {
        self.blocks
            .iter()
            .find(|b| crate::settings::uuid_eq(&b.id_uuid, uuid))
    }
    pub fn by_path(&self, path: &str) -> Option<&BlockInfo> {
        self.blocks.iter().find(|b| b.path == path)
    }
    /// The unlocked cleartext block of a LUKS container, found either through the container's
    /// `CleartextDevice` or the cleartext's `CryptoBackingDevice`.
    pub fn cleartext_of(&self, luks: &BlockInfo) -> Option<&BlockInfo> {
        if let Some(Some(p)) = &luks.cleartext
            && let Some(b) = self.by_path(p)
        {
            return Some(b);
        }
        self.blocks
            .iter()
            .find(|b| b.crypto_backing.as_deref() == Some(luks.path.as_str()))
    }
}

type Managed =
    HashMap<OwnedObjectPath, HashMap<zbus::names::OwnedInterfaceName, HashMap<String, OwnedValue>>>;

/// Reads all UDisks2 objects in one call.
pub(crate) async fn snapshot(conn: &zbus::Connection) -> Result<Snapshot, DiskError> {
    let om = zbus::fdo::ObjectManagerProxy::builder(conn)
        .destination(SERVICE)
        .and_then(|b| b.path(ROOT))
        .map_err(|e| dbus_error("building the UDisks2 object manager proxy", e))?
        .build()
        .await
        .map_err(|e| dbus_error("connecting to UDisks2", e))?;
    let objects: Managed = om
        .get_managed_objects()
        .await
        .map_err(|e| dbus_error("listing UDisks2 objects", zbus::Error::from(e)))?;
    Ok(parse_objects(objects))
}

fn parse_objects(objects: Managed) -> Snapshot {
    let mut snap = Snapshot::default();
    for (path, mut ifaces) in objects {
        let path = path.as_str().to_owned();
        let iface = |name: &str,
                     ifaces: &mut HashMap<
            zbus::names::OwnedInterfaceName,
            HashMap<String, OwnedValue>,
        >| {
            let key = ifaces.keys().find(|k| k.as_str() == name).cloned()?;
            ifaces.remove(&key)
        };
        if let Some(mut d) = iface(IF_DRIVE, &mut ifaces) {
            snap.drives.insert(
                path.clone(),
                DriveInfo {
                    can_power_off: take_bool(&mut d, "CanPowerOff"),
                },
            );
            continue;
        }
        let Some(mut block) = iface(IF_BLOCK, &mut ifaces) else {
            continue;
        };
        let mut info = BlockInfo {
            path,
            device: PathBuf::from(take_bytes_str(&mut block, "Device")),
            id_uuid: take_string(&mut block, "IdUUID"),
            id_type: take_string(&mut block, "IdType"),
            crypto_backing: take_path(&mut block, "CryptoBackingDevice"),
            drive: take_path(&mut block, "Drive"),
            ..Default::default()
        };
        if let Some(mut enc) = iface(IF_ENCRYPTED, &mut ifaces) {
            info.cleartext = Some(take_path(&mut enc, "CleartextDevice"));
        }
        if let Some(mut fs) = iface(IF_FILESYSTEM, &mut ifaces) {
            let mps = fs
                .remove("MountPoints")
                .and_then(|v| Vec::<Vec<u8>>::try_from(v).ok())
                .unwrap_or_default();
            info.mount_points = Some(
                mps.into_iter()
                    .map(|b| PathBuf::from(bytes_to_string(b)))
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect(),
            );
        }
        snap.blocks.push(info);
    }
    snap.blocks.sort_by(|a, b| a.path.cmp(&b.path));
    snap
}

fn take_string(props: &mut HashMap<String, OwnedValue>, name: &str) -> String {
    props
        .remove(name)
        .and_then(|v| String::try_from(v).ok())
        .unwrap_or_default()
}

fn take_bool(props: &mut HashMap<String, OwnedValue>, name: &str) -> bool {
    props
        .remove(name)
        .and_then(|v| bool::try_from(v).ok())
        .unwrap_or(false)
}

/// Object path property; "/" is D-Bus for "none".
fn take_path(props: &mut HashMap<String, OwnedValue>, name: &str) -> Option<String> {
    props
        .remove(name)
        .and_then(|v| OwnedObjectPath::try_from(v).ok())
        .map(|p| p.as_str().to_owned())
        .filter(|p| p != "/")
}

fn take_bytes_str(props: &mut HashMap<String, OwnedValue>, name: &str) -> String {
    props
        .remove(name)
        .and_then(|v| Vec::<u8>::try_from(v).ok())
        .map(bytes_to_string)
        .unwrap_or_default()
}

/// UDisks2 sends paths as NUL-terminated byte arrays.
fn bytes_to_string(mut b: Vec<u8>) -> String {
    while b.last() == Some(&0) {
        b.pop();
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// The D-Bus error name of a failed method call, if it was one.
pub(crate) fn error_name(e: &zbus::Error) -> Option<&str> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.as_str()),
        zbus::Error::FDO(f) => match **f {
            zbus::fdo::Error::ServiceUnknown(_) => {
                Some("org.freedesktop.DBus.Error.ServiceUnknown")
            }
            zbus::fdo::Error::NameHasNoOwner(_) => {
                Some("org.freedesktop.DBus.Error.NameHasNoOwner")
            }
            _ => None,
        },
        _ => None,
    }
}

/// The human part of a D-Bus error.
pub(crate) fn error_text(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(_, Some(msg), _) => msg.clone(),
        other => other.to_string(),
    }
}

/// Turns a D-Bus failure into a `Failed` that says what was being done and what to check.
pub(crate) fn dbus_error(doing: &str, e: zbus::Error) -> DiskError {
    match error_name(&e) {
        Some(n) if n.ends_with("ServiceUnknown") || n.ends_with("NameHasNoOwner") => {
            DiskError::Failed(format!(
                "{doing}: udisksd is not running on the system bus ({SERVICE}); install and \
                 start udisks2"
            ))
        }
        _ => DiskError::Failed(format!("{doing}: {}", error_text(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_managed_objects() {
        let mut objects: Managed = HashMap::new();
        let block = |props: Vec<(&str, Value<'static>)>| {
            props
                .into_iter()
                .map(|(k, v)| (k.to_owned(), OwnedValue::try_from(v).unwrap()))
                .collect::<HashMap<_, _>>()
        };
        let name = |s: &str| zbus::names::OwnedInterfaceName::try_from(s).unwrap();
        let op = |s: &str| OwnedObjectPath::try_from(s).unwrap();
        let mut luks = HashMap::new();
        luks.insert(
            name(IF_BLOCK),
            block(vec![
                ("Device", Value::from(b"/dev/sda1\0".to_vec())),
                ("IdUUID", Value::from("AAA")),
                ("IdType", Value::from("crypto_LUKS")),
                ("CryptoBackingDevice", Value::from(op("/"))),
                (
                    "Drive",
                    Value::from(op("/org/freedesktop/UDisks2/drives/wd")),
                ),
            ]),
        );
        luks.insert(
            name(IF_ENCRYPTED),
            block(vec![("CleartextDevice", Value::from(op("/x/dm_2d0")))]),
        );
        objects.insert(op("/x/sda1"), luks);
        let mut clear = HashMap::new();
        clear.insert(
            name(IF_BLOCK),
            block(vec![
                ("Device", Value::from(b"/dev/dm-0\0".to_vec())),
                ("IdUUID", Value::from("bbb")),
                ("IdType", Value::from("ext4")),
                ("CryptoBackingDevice", Value::from(op("/x/sda1"))),
                ("Drive", Value::from(op("/"))),
            ]),
        );
        clear.insert(
            name(IF_FILESYSTEM),
            block(vec![(
                "MountPoints",
                Value::from(vec![b"/media/root/bbb\0".to_vec()]),
            )]),
        );
        objects.insert(op("/x/dm_2d0"), clear);
        let mut drive = HashMap::new();
        drive.insert(
            name(IF_DRIVE),
            block(vec![("CanPowerOff", Value::from(true))]),
        );
        objects.insert(op("/org/freedesktop/UDisks2/drives/wd"), drive);

        let snap = parse_objects(objects);
        let l = snap.by_uuid("aaa").unwrap();
        assert!(l.is_luks());
        assert_eq!(l.device, PathBuf::from("/dev/sda1"));
        assert_eq!(l.crypto_backing, None);
        assert_eq!(
            l.drive.as_deref(),
            Some("/org/freedesktop/UDisks2/drives/wd")
        );
        let c = snap.cleartext_of(l).unwrap();
        assert_eq!(c.first_mount(), Some(PathBuf::from("/media/root/bbb")));
        assert_eq!(c.drive, None);
        assert!(snap.drives["/org/freedesktop/UDisks2/drives/wd"].can_power_off);
    }
}

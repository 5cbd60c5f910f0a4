//! The sync plan: which OS images, kernels and boot images the store should hold, and what that means for
//! each (keep, download, unpin). A pure function of the metal-api listing, what the origin said about each
//! URL, what the store holds and the policy.
//!
//! Images follow metal-image-cache-sync's selection (spec §2.5) with its *intended* size rule, not the
//! inverted loop it ships since 2025: group by variant (os + major.minor), newest first, at most
//! `max_per_name` per variant (0 = all); then, while the total is at or over the cache size, drop the
//! oldest image of the largest variant that still has more than `min_per_name` (ties: smallest variant
//! name). The budget is soft: the minimum per variant wins over the size.

use super::version::{Version, parse_image_id, variant};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Image,
    Kernel,
    BootImage,
}

/// An OS image as metal-api lists it.
#[derive(Debug, Clone)]
pub struct Image {
    pub id: String,
    pub url: String,
    pub expires: Option<SystemTime>,
}

/// What the origin told us about one URL (`None` in the map: it did not answer or does not have it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub size: u64,
    /// First token of `<url>.md5`, lowercase hex; `None` when there is no sidecar.
    pub md5: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub min_per_name: usize,
    pub max_per_name: usize,
    pub grace: Duration,
    pub excludes: Vec<String>,
    pub max_size: u64,
    pub kernels: bool,
    pub boot_images: bool,
    pub now: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Keep,
    Download,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    pub kind: Kind,
    /// The image id, or the kernel's/boot image's version found in its URL.
    pub name: String,
    pub url: String,
    pub size: u64,
    pub md5: Option<String>,
    pub action: Action,
}

/// A listed item the run could not even ask the origin about: it fails the run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failed {
    pub kind: Kind,
    pub name: String,
    pub url: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub items: Vec<Item>,
    /// Listed, wanted, but unavailable (origin unreachable, download refused).
    #[serde(default)]
    pub failed: Vec<Failed>,
    /// (name, why) of everything listed but not planned.
    pub skipped: Vec<(String, String)>,
    /// Set when the size rule could not get under the cache size.
    pub over_budget: Option<String>,
}

impl Plan {
    pub fn download_bytes(&self) -> u64 {
        self.items
            .iter()
            .filter(|i| i.action == Action::Download)
            .map(|i| i.size)
            .sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.items.iter().map(|i| i.size).sum()
    }
}

/// The URLs the runner must ask the origin about before planning: images passing excludes and expiry,
/// and the enabled kernels and boot images.
pub fn urls_to_probe(
    images: &[Image],
    boot: &[(Option<String>, Option<String>)],
    policy: &Policy,
) -> Vec<(Kind, String)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for image in images {
        if eligible(image, policy).is_ok() && seen.insert(image.url.clone()) {
            out.push((Kind::Image, image.url.clone()));
        }
    }
    for (kind, url) in boot_urls(boot, policy) {
        if seen.insert(url.clone()) {
            out.push((kind, url));
        }
    }
    out
}

fn excluded(url: &str, policy: &Policy) -> bool {
    policy
        .excludes
        .iter()
        .any(|e| !e.is_empty() && url.contains(e.as_str()))
}

fn eligible(image: &Image, policy: &Policy) -> Result<(String, Version), String> {
    if image.url.is_empty() {
        return Err("no URL".into());
    }
    if excluded(&image.url, policy) {
        return Err("excluded".into());
    }
    if let Some(expires) = image.expires
        && policy
            .now
            .duration_since(expires)
            .is_ok_and(|late| late > policy.grace)
    {
        return Err("expired".into());
    }
    parse_image_id(&image.id).ok_or_else(|| "id has no parsable version".into())
}

/// (kind, url) of the enabled kernels and boot images, deduplicated, empty and excluded ones left out.
fn boot_urls(boot: &[(Option<String>, Option<String>)], policy: &Policy) -> Vec<(Kind, String)> {
    let mut out: Vec<(Kind, String)> = Vec::new();
    for (kernel, initrd) in boot {
        let pairs = [
            (Kind::Kernel, kernel, policy.kernels),
            (Kind::BootImage, initrd, policy.boot_images),
        ];
        for (kind, url, enabled) in pairs {
            let Some(url) = url.as_deref().filter(|u| !u.trim().is_empty()) else {
                continue;
            };
            if enabled && !excluded(url, policy) && !out.iter().any(|(k, u)| *k == kind && u == url)
            {
                out.push((kind, url.to_string()));
            }
        }
    }
    out
}

/// `remote`: what the origin said about each URL it serves; `unavailable`: URL → why it could not be
/// asked (origin unreachable, download refused): such items fail the run instead of being skipped.
/// `stored`: URL → md5 of what the store holds for it (`Some(None)`: stored, md5 unknown).
pub fn plan(
    images: &[Image],
    boot: &[(Option<String>, Option<String>)],
    remote: &HashMap<String, Remote>,
    unavailable: &HashMap<String, String>,
    stored: &HashMap<String, Option<String>>,
    policy: &Policy,
) -> Plan {
    let mut plan = Plan::default();
    // Images: eligible, present with a sidecar on the origin, grouped by variant.
    let mut groups: BTreeMap<String, Vec<(Version, &Image, &Remote)>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for image in images {
        let (os, version) = match eligible(image, policy) {
            Ok(x) => x,
            Err(why) => {
                plan.skipped.push((image.id.clone(), why));
                continue;
            }
        };
        if let Some(why) = unavailable.get(&image.url) {
            plan.failed.push(Failed {
                kind: Kind::Image,
                name: image.id.clone(),
                url: image.url.clone(),
                reason: why.clone(),
            });
            continue;
        }
        let Some(r) = remote.get(&image.url).filter(|r| r.md5.is_some()) else {
            plan.skipped.push((
                image.id.clone(),
                "not on the origin with a .md5 sidecar".into(),
            ));
            continue;
        };
        if !seen.insert(image.url.clone()) {
            plan.skipped
                .push((image.id.clone(), "same URL as another image".into()));
            continue;
        }
        groups
            .entry(variant(&os, &version))
            .or_default()
            .push((version, image, r));
    }
    let mut total = 0u64;
    for members in groups.values_mut() {
        members.sort_by(|a, b| b.0.cmp(&a.0));
        if policy.max_per_name > 0 && members.len() > policy.max_per_name {
            for (_, image, _) in members.drain(policy.max_per_name..) {
                plan.skipped
                    .push((image.id.clone(), "beyond max_images_per_name".into()));
            }
        }
        total += members.iter().map(|(_, _, r)| r.size).sum::<u64>();
    }
    while total >= policy.max_size {
        let floor = policy.min_per_name.max(1);
        let candidate = groups
            .iter()
            .filter(|(_, m)| m.len() > floor)
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| b.0.cmp(a.0)))
            .map(|(k, _)| k.clone());
        let Some(key) = candidate else {
            plan.over_budget = Some(format!(
                "{total} bytes of images after trimming every variant to min_images_per_name ({floor}); \
                 cache.max_size is {}",
                policy.max_size
            ));
            break;
        };
        if let Some(members) = groups.get_mut(&key)
            && let Some((_, image, r)) = members.pop()
        {
            total -= r.size;
            plan.skipped
                .push((image.id.clone(), "dropped to fit cache.max_size".into()));
        }
    }
    // Oldest first within each variant, variants by name: a stable, readable order.
    for members in groups.values() {
        for (_, image, r) in members.iter().rev() {
            let action = match stored.get(&image.url) {
                Some(Some(md5)) if Some(md5) == r.md5.as_ref() => Action::Keep,
                _ => Action::Download,
            };
            plan.items.push(Item {
                kind: Kind::Image,
                name: image.id.clone(),
                url: image.url.clone(),
                size: r.size,
                md5: r.md5.clone(),
                action,
            });
        }
    }
    for (kind, url) in boot_urls(boot, policy) {
        let name = display_name(&url);
        if let Some(why) = unavailable.get(&url) {
            plan.failed.push(Failed {
                kind,
                name,
                url,
                reason: why.clone(),
            });
            continue;
        }
        let r = remote.get(&url);
        let action = match (kind, r, stored.get(&url)) {
            // Boot images need their sidecar; md5 decides.
            (Kind::BootImage, Some(Remote { md5: Some(m), .. }), Some(Some(have))) if m == have => {
                Action::Keep
            }
            (Kind::BootImage, Some(Remote { md5: Some(_), .. }), _) => Action::Download,
            (Kind::BootImage, _, _) => {
                plan.skipped.push((
                    name,
                    "boot image without a .md5 sidecar on the origin".into(),
                ));
                continue;
            }
            // Kernels have no checksum: stored is kept; an unknown size is not a reason to skip.
            (_, _, Some(_)) => Action::Keep,
            _ => Action::Download,
        };
        plan.items.push(Item {
            kind,
            name,
            size: r.map_or(0, |r| r.size),
            md5: r.and_then(|r| r.md5.clone()),
            url,
            action,
        });
    }
    plan
}

/// The first path segment that reads as a version (`v0.15.0`, `6.18.38-172`), else the URL.
fn display_name(url: &str) -> String {
    url.split('/')
        .find(|seg| super::version::parse_version(seg).is_some() && seg.contains('.'))
        .map_or_else(|| url.to_string(), str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;

    #[test]
    fn unavailable_urls_fail_instead_of_being_skipped() {
        let images = vec![img("debian-13.0.20260101"), img("debian-13.0.20260201")];
        let (a, b) = (images[0].url.clone(), images[1].url.clone());
        let remote = HashMap::from([(
            a,
            Remote {
                size: GB,
                md5: Some("m".into()),
            },
        )]);
        let unavailable = HashMap::from([
            (b, "origin unreachable".to_string()),
            (
                "http://k.test/v1.2/kernel".to_string(),
                "refused".to_string(),
            ),
        ]);
        let boot = vec![(Some("http://k.test/v1.2/kernel".to_string()), None)];
        let p = plan(
            &images,
            &boot,
            &remote,
            &unavailable,
            &HashMap::new(),
            &policy(),
        );
        assert_eq!(p.items.len(), 1);
        let failed: Vec<(&str, &str)> = p
            .failed
            .iter()
            .map(|f| (f.name.as_str(), f.reason.as_str()))
            .collect();
        assert_eq!(
            failed,
            [
                ("debian-13.0.20260201", "origin unreachable"),
                ("v1.2", "refused")
            ]
        );
        assert!(p.skipped.is_empty(), "{:?}", p.skipped);
    }

    fn policy() -> Policy {
        Policy {
            min_per_name: 1,
            max_per_name: 0,
            grace: Duration::ZERO,
            excludes: vec!["/pull_requests/".into()],
            max_size: 100 * GB,
            kernels: true,
            boot_images: true,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    }

    fn img(id: &str) -> Image {
        Image {
            id: id.into(),
            url: format!("https://images.test/{id}/img.tar.lz4"),
            expires: None,
        }
    }

    fn remote_for(images: &[Image], size: u64) -> HashMap<String, Remote> {
        images
            .iter()
            .map(|i| {
                (
                    i.url.clone(),
                    Remote {
                        size,
                        md5: Some(format!("md5-of-{}", i.id)),
                    },
                )
            })
            .collect()
    }

    fn names(p: &Plan) -> Vec<&str> {
        p.items.iter().map(|i| i.name.as_str()).collect()
    }

    fn why<'a>(p: &'a Plan, id: &str) -> Option<&'a str> {
        p.skipped
            .iter()
            .find(|(n, _)| n == id)
            .map(|(_, w)| w.as_str())
    }

    #[test]
    fn variants_max_per_name_and_order() {
        let images = [
            img("ubuntu-20.04.20201026"),
            img("ubuntu-20.04.20201101"),
            img("ubuntu-20.04.20201201"),
            img("ubuntu-22.04.20230101"),
            img("firewall-ubuntu-3.0"),
        ];
        let remote = remote_for(&images, GB);
        let mut pol = policy();
        pol.max_per_name = 2;
        let p = plan(
            &images,
            &[],
            &remote,
            &HashMap::new(),
            &HashMap::new(),
            &pol,
        );
        assert_eq!(
            names(&p),
            [
                "firewall-ubuntu-3.0",
                "ubuntu-20.04.20201101",
                "ubuntu-20.04.20201201",
                "ubuntu-22.04.20230101"
            ]
        );
        assert_eq!(
            why(&p, "ubuntu-20.04.20201026"),
            Some("beyond max_images_per_name")
        );
        assert!(p.items.iter().all(|i| i.action == Action::Download));
        assert_eq!(p.download_bytes(), 4 * GB);
    }

    #[test]
    fn size_rule_trims_the_largest_variant_oldest_first_and_min_wins() {
        let images = [
            img("ubuntu-20.04.1"),
            img("ubuntu-20.04.2"),
            img("ubuntu-20.04.3"),
            img("debian-12.0.1"),
            img("debian-12.0.2"),
        ];
        let remote = remote_for(&images, 10 * GB);
        let mut pol = policy();
        pol.max_size = 30 * GB; // 50 GB listed
        let p = plan(
            &images,
            &[],
            &remote,
            &HashMap::new(),
            &HashMap::new(),
            &pol,
        );
        // 50 GB: ubuntu (3) loses its oldest → 40; the 2/2 tie goes to the smaller name, debian → 30; still
        // not under 30 (the rule is `total >= max`), and only ubuntu has more than one left → 20.
        assert_eq!(names(&p), ["debian-12.0.2", "ubuntu-20.04.3"]);
        for dropped in ["ubuntu-20.04.1", "debian-12.0.1", "ubuntu-20.04.2"] {
            assert_eq!(
                why(&p, dropped),
                Some("dropped to fit cache.max_size"),
                "{dropped}"
            );
        }
        assert!(p.over_budget.is_none());

        // min_images_per_name = 2: nothing may go below two per variant, so the cap stays exceeded.
        pol.min_per_name = 2;
        pol.max_size = 10 * GB;
        let p = plan(
            &images,
            &[],
            &remote,
            &HashMap::new(),
            &HashMap::new(),
            &pol,
        );
        assert_eq!(p.items.len(), 4);
        assert!(p.over_budget.is_some());

        // Under budget nothing is trimmed (the shipped upstream bug trims exactly then).
        pol.min_per_name = 1;
        pol.max_size = 100 * GB;
        let p = plan(
            &images,
            &[],
            &remote,
            &HashMap::new(),
            &HashMap::new(),
            &pol,
        );
        assert_eq!(p.items.len(), 5);
    }

    #[test]
    fn excludes_expiry_grace_and_unparsable_ids() {
        let now = policy().now;
        let mut expired = img("debian-12.0.1");
        expired.expires = Some(now - Duration::from_secs(3 * 86_400));
        let mut fresh = img("debian-12.0.2");
        fresh.expires = Some(now + Duration::from_secs(86_400));
        let mut pr = img("debian-12.0.3");
        pr.url = "https://images.test/metal-os/pull_requests/42-x/debian/12/img.tar.lz4".into();
        let odd = img("debian");
        let missing_md5 = img("ubuntu-24.04.1");
        let images = [expired.clone(), fresh, pr, odd, missing_md5.clone()];
        let mut remote = remote_for(&images, GB);
        remote.get_mut(&missing_md5.url).unwrap().md5 = None;
        let p = plan(
            &images,
            &[],
            &remote,
            &HashMap::new(),
            &HashMap::new(),
            &policy(),
        );
        assert_eq!(names(&p), ["debian-12.0.2"]);
        assert_eq!(why(&p, "debian-12.0.1"), Some("expired"));
        assert_eq!(why(&p, "debian-12.0.3"), Some("excluded"));
        assert_eq!(why(&p, "debian"), Some("id has no parsable version"));
        assert_eq!(
            why(&p, "ubuntu-24.04.1"),
            Some("not on the origin with a .md5 sidecar")
        );
        // A grace period of 5 days brings the expired one back.
        let mut pol = policy();
        pol.grace = Duration::from_secs(5 * 86_400);
        let p = plan(
            &images,
            &[],
            &remote,
            &HashMap::new(),
            &HashMap::new(),
            &pol,
        );
        assert!(names(&p).contains(&"debian-12.0.1"));
        // probing skips what cannot be planned anyway
        let probe = urls_to_probe(&images, &[], &policy());
        assert_eq!(probe.len(), 2, "{probe:?}");
    }

    #[test]
    fn unchanged_md5_is_kept_changed_md5_is_downloaded() {
        let images = [img("debian-13.0.1"), img("debian-13.0.2")];
        let remote = remote_for(&images, GB);
        let stored = HashMap::from([
            (
                images[0].url.clone(),
                Some("md5-of-debian-13.0.1".to_string()),
            ),
            (images[1].url.clone(), Some("an-older-md5".to_string())),
        ]);
        let p = plan(&images, &[], &remote, &HashMap::new(), &stored, &policy());
        let actions: Vec<Action> = p.items.iter().map(|i| i.action).collect();
        assert_eq!(actions, [Action::Keep, Action::Download]);
        assert_eq!(p.download_bytes(), GB);
    }

    #[test]
    fn kernels_and_boot_images() {
        let kernel =
            "https://github.test/metal-stack/kernel/releases/download/6.18.38-172/metal-kernel";
        let initrd = "https://github.test/metal-stack/metal-hammer/releases/download/v0.15.0/metal-hammer-initrd.img.lz4";
        let bad_initrd = "https://github.test/hammer/v0.16.0/initrd.img";
        let boot = vec![
            (Some(kernel.to_string()), Some(initrd.to_string())),
            (Some(kernel.to_string()), Some(bad_initrd.to_string())), // duplicate kernel
            (Some(String::new()), None),                              // empty: skipped
        ];
        let remote = HashMap::from([
            (
                initrd.to_string(),
                Remote {
                    size: 50,
                    md5: Some("abc".into()),
                },
            ),
            (
                bad_initrd.to_string(),
                Remote {
                    size: 60,
                    md5: None,
                },
            ),
        ]);
        let stored = HashMap::from([(kernel.to_string(), None)]);
        let p = plan(&[], &boot, &remote, &HashMap::new(), &stored, &policy());
        assert_eq!(names(&p), ["6.18.38-172", "v0.15.0"]);
        assert_eq!(p.items[0].kind, Kind::Kernel);
        assert_eq!(
            p.items[0].action,
            Action::Keep,
            "a stored kernel is kept; it has no checksum"
        );
        assert_eq!(p.items[0].size, 0, "unknown size does not drop a kernel");
        assert_eq!(p.items[1].action, Action::Download);
        assert!(why(&p, "v0.16.0").is_some());

        let mut pol = policy();
        pol.kernels = false;
        pol.boot_images = false;
        let p = plan(&[], &boot, &remote, &HashMap::new(), &stored, &pol);
        assert!(p.items.is_empty(), "the switches really turn them off");
    }
}

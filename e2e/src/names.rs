use rand::Rng;

/// Characters of the random suffix: valid in DNS labels, git repository names, OCI repository
/// names and chart names alike.
const SUFFIX_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const SUFFIX_LEN: usize = 5;

/// A name for something a test makes on the shared harness: `hint` turned into a DNS-1123 label
/// (lowercase letters, digits and `-`), cut so the whole fits in `max_len`, plus `-` and a
/// random suffix, so parallel tests and reruns never collide.
///
/// A module path (`harness_git::some_test`) keeps only its last segment.
#[must_use]
pub fn unique_name(hint: &str, max_len: usize) -> String {
    let hint = hint.rsplit("::").next().unwrap_or(hint);
    let mut label = String::with_capacity(hint.len());
    for c in hint.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            label.push(c);
        } else if !label.ends_with('-') && !label.is_empty() {
            label.push('-');
        }
    }
    let room = max_len.saturating_sub(SUFFIX_LEN + 1);
    label.truncate(room);
    let label = label.trim_end_matches('-');
    let label = if label.is_empty() { "test" } else { label };

    let mut rng = rand::rng();
    let suffix: String = (0..SUFFIX_LEN)
        .map(|_| char::from(SUFFIX_ALPHABET[rng.random_range(0..SUFFIX_ALPHABET.len())]))
        .collect();
    format!("{label}-{suffix}")
}

/// The name of the running test: libtest runs each test on a thread named after it.
pub(crate) fn current_test_name() -> String {
    std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .unwrap_or("test")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::unique_name;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn a_test_path_becomes_a_dns_label_with_a_random_suffix() {
        let name = unique_name("smoke::Git_clone__over SSH", 63);
        assert!(name.starts_with("git-clone-over-ssh-"), "{name}");
        assert!(is_dns_label(&name), "{name}");
        assert_ne!(name, unique_name("smoke::Git_clone__over SSH", 63));
    }

    #[test]
    fn a_long_hint_is_cut_to_fit() {
        let name = unique_name(&"a_very_long_test_name".repeat(10), 63);
        assert!(name.len() <= 63 && name.len() > 50, "{name}");
        assert!(is_dns_label(&name), "{name}");
    }

    #[test]
    fn the_running_test_is_found_by_its_thread_name() {
        assert!(
            super::current_test_name().ends_with("the_running_test_is_found_by_its_thread_name"),
            "{}",
            super::current_test_name()
        );
    }

    #[test]
    fn an_empty_hint_still_gives_a_valid_name() {
        let name = unique_name("::__", 20);
        assert!(name.starts_with("test-"), "{name}");
        assert!(is_dns_label(&name), "{name}");
    }
}

/// The version of Modeless, in one place: `modeless --version` prints it, and tools and logs
/// that name the framework's version read it here.
public enum ModelessVersion {
    /// Semantic version of this source tree.
    public static let current = "0.2.0"
}

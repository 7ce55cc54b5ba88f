import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

extension PCIBinder {
    /// What applying one persistent override did.
    public struct AppliedOverride: Sendable {
        /// The function the override names.
        public var address: PCIAddress
        /// The override as read from its file.
        public var override: OverrideStore.Override
        /// The bind's report, or why it was refused (the function is absent, in use, …).
        public var result: Result<Report, BusError>
    }

    /// Binds every function that has a persistent override (or, with `only`, those of them)
    /// to its driver: what `modeless-overrides.service` runs at boot.
    ///
    /// Each override is applied on its own, with every check of ``bind(_:to:force:dryRun:)``
    /// (`force` as recorded): one absent or refused function does not keep the others from
    /// their drivers. The functions with overrides count as vfio-pci for each other's IOMMU
    /// group check.
    /// - Throws: ``BusError`` `.invalidOverride` when an override file cannot be used (nothing
    ///   is bound then), `.noOverride` when `only` names a function without one.
    public func applyOverrides(_ store: OverrideStore, only: [PCIAddress]? = nil) throws(BusError) -> [AppliedOverride] {
        let overrides = try store.load()
        if let only, let missing = only.first(where: { overrides[$0] == nil }) {
            throw BusError(.noOverride, "\(missing) has no persistent override in \(store.directory)",
                           remedy: "`modeless overrides` lists them; `modeless bind \(missing) --persist` records one")
        }
        let chosen = overrides.filter { only?.contains($0.key) ?? true }.sorted { $0.key < $1.key }
        let companions = Set(chosen.filter { $0.value.driver == .vfioPCI }.map(\.key))
        return chosen.map { address, override in
            let result: Result<Report, BusError>
            do throws(BusError) {
                result = .success(try bind(.address(address), to: override.driver, force: override.force, dryRun: false,
                                           companions: companions))
            } catch {
                result = .failure(error)
            }
            return AppliedOverride(address: address, override: override, result: result)
        }
    }
}

extension PCIBinder {
    /// Applies the persistent override of one function that has just appeared (a hot re-plug,
    /// seen by udev's `add` event), or does nothing when it has none: what the udev rule that
    /// scripts/install-udev-rules writes runs for each PCI function added.
    ///
    /// A function without an override is not touched. One with an override is bound with every
    /// check of ``bind(_:to:force:dryRun:)`` (`force` as recorded); the other functions with a
    /// vfio-pci override count as vfio-pci for its IOMMU group check, as at boot. The `add`
    /// event comes before the kernel lets drivers match the function, so a refused bind is
    /// tried again every 100 ms for `settleNanoseconds`, and the last outcome is returned.
    /// - Returns: what was done, or nil when `address` has no override.
    /// - Throws: ``BusError`` `.invalidOverride` when an override file cannot be used (nothing
    ///   is bound then).
    public func applyOverride(ofAdded address: PCIAddress, _ store: OverrideStore,
                              settleNanoseconds: UInt64 = 5_000_000_000) throws(BusError) -> AppliedOverride? {
        // Most functions have no override: decided from one path, before the directory is read.
        guard FileAccess.exists(store.file(for: address)) else { return nil }
        let overrides = try store.load()
        guard let override = overrides[address] else { return nil }
        let companions = Set(overrides.filter { $0.value.driver == .vfioPCI }.map(\.key))
        let deadline = monotonicNanoseconds() + settleNanoseconds
        while true {
            let result: Result<Report, BusError>
            do throws(BusError) {
                result = .success(try bind(.address(address), to: override.driver, force: override.force, dryRun: false,
                                           companions: companions))
            } catch {
                result = .failure(error)
            }
            if case .failure = result, monotonicNanoseconds() < deadline {
                usleep(Self.addedRetryMicroseconds)
                continue
            }
            return AppliedOverride(address: address, override: override, result: result)
        }
    }

    /// How long ``applyOverride(ofAdded:_:settleNanoseconds:)`` waits between tries.
    static let addedRetryMicroseconds: useconds_t = 100_000
}

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

/// What a call naming several functions did, or would have done, with each.
public struct DeviceOutcome: Sendable {
    /// What happened to one function.
    public enum State: Sendable {
        /// Bound or given back (or, for a dry run, checked): the report says how.
        case done(PCIBinder.Report)
        /// Refused by a check, or failed when the kernel was asked; the error says why.
        case refused(BusError)
        /// Passed its checks but left as it was, because another function of the call was refused.
        case unchanged(PCIDevice)
        /// Changed, then put back as it was because a later function of the call failed.
        case undone(PCIDevice)
        /// Changed, and putting it back after a later failure failed too.
        case notUndone(PCIDevice, BusError)
        /// Not bound to a user-mode driver; only its persistent override was removed.
        case overrideRemoved(PCIAddress)
    }

    /// The selector as the caller wrote it (`eth1`, `03:00.0`).
    public var name: String
    /// What happened to the function.
    public var state: State
}

/// A call naming several functions that was refused as a whole: nothing changed (functions
/// changed before a kernel failure were put back, as ``DeviceOutcome/State/undone(_:)`` says).
public struct BatchError: Error, Sendable, CustomStringConvertible {
    /// The first failure, whose kind gives the exit code.
    public var failure: BusError
    /// Every function of the call, in the order named.
    public var outcomes: [DeviceOutcome]

    /// A refusal whose exit code comes from `failure`, reporting every function's `outcomes`.
    public init(failure: BusError, outcomes: [DeviceOutcome]) {
        self.failure = failure
        self.outcomes = outcomes
    }

    /// The first failure's message and remedy; the outcomes are for the caller to print.
    public var description: String { failure.description }
}

extension PCIBinder {
    /// Binds every function the selectors name, all or nothing.
    ///
    /// Each function is checked first as a dry run of ``bind(_:to:force:dryRun:)`` (the functions
    /// of the call count as vfio-pci for each other's IOMMU group check); if any is refused,
    /// nothing changes and ``BatchError`` lists each function's outcome. Then each is bound in
    /// turn; if the kernel refuses one, those already bound are given back. With `persist`,
    /// each function's override is written once all are bound (the store's directory is checked
    /// for writing before anything changes).
    public func bind(all selectors: [DeviceSelector], to driver: UserModeDriver, force: Bool = false,
                     dryRun: Bool = false, persist: OverrideStore? = nil) throws(BatchError) -> [DeviceOutcome] {
        let targets = try resolveAll(selectors)
        let companions = Set(targets.map(\.device.address))
        var checked: [DeviceOutcome] = []
        var firstFailure: BusError?
        for target in targets {
            do throws(BusError) {
                let report = try bind(.address(target.device.address), to: driver, force: force, dryRun: true,
                                      companions: companions)
                checked.append(DeviceOutcome(name: target.name, state: .done(report)))
            } catch {
                firstFailure = firstFailure ?? error
                checked.append(DeviceOutcome(name: target.name, state: .refused(error)))
            }
        }
        if try endOfChecks(checked, firstFailure: firstFailure, persist: persist, dryRun: dryRun) { return checked }

        var done: [DeviceOutcome] = []
        for target in targets {
            do throws(BusError) {
                let report = try bind(.address(target.device.address), to: driver, force: force, dryRun: false,
                                      companions: companions)
                done.append(DeviceOutcome(name: target.name, state: .done(report)))
            } catch {
                throw BatchError(failure: error, outcomes: undo(done, failed: target, error: error, remaining: targets)
                                 { (binder, report) throws(BusError) in _ = try binder.unbind(.address(report.device.address)) })
            }
        }
        guard let persist else { return done }
        for (index, target) in targets.enumerated() {
            do throws(BusError) {
                try persist.set(.init(driver: driver, force: force), for: target.device.address)
            } catch {
                for written in targets.prefix(index) { try? persist.set(nil, for: written.device.address) }
                throw BatchError(failure: error, outcomes: undo(done, failed: nil, error: error, remaining: [])
                                 { (binder, report) throws(BusError) in _ = try binder.unbind(.address(report.device.address)) })
            }
        }
        return done
    }

    /// Gives back every function the selectors name, all or nothing, like ``bind(all:to:force:dryRun:persist:)``.
    ///
    /// With `persist`, each function's override is removed as well; a function that is not on
    /// a user-mode driver but has an override then only loses its override. With `releasing`,
    /// a Modeless driver holding a function through VFIO is asked to release it (see
    /// ``unbind(_:releasing:dryRun:)``).
    public func unbind(all selectors: [DeviceSelector], releasing: Bool = false, dryRun: Bool = false,
                       persist: OverrideStore? = nil) throws(BatchError) -> [DeviceOutcome] {
        let targets = try resolveAll(selectors)
        var checked: [DeviceOutcome] = []
        var firstFailure: BusError?
        var overrideOnly: Set<PCIAddress> = []
        for target in targets {
            do throws(BusError) {
                do throws(BusError) {
                    let report = try unbind(.address(target.device.address), releasing: releasing, dryRun: true)
                    checked.append(DeviceOutcome(name: target.name, state: .done(report)))
                } catch where error.kind == .notBound && persist != nil {
                    // Not on a user-mode driver: with an override, only the override goes.
                    guard try persist?.override(for: target.device.address) != nil else { throw error }
                    overrideOnly.insert(target.device.address)
                    checked.append(DeviceOutcome(name: target.name, state: .overrideRemoved(target.device.address)))
                }
            } catch {
                firstFailure = firstFailure ?? error
                checked.append(DeviceOutcome(name: target.name, state: .refused(error)))
            }
        }
        if try endOfChecks(checked, firstFailure: firstFailure, persist: persist, dryRun: dryRun) { return checked }

        var done: [DeviceOutcome] = []
        for target in targets {
            if overrideOnly.contains(target.device.address) {
                done.append(DeviceOutcome(name: target.name, state: .overrideRemoved(target.device.address)))
                continue
            }
            do throws(BusError) {
                let report = try unbind(.address(target.device.address), releasing: releasing)
                done.append(DeviceOutcome(name: target.name, state: .done(report)))
            } catch {
                throw BatchError(failure: error, outcomes: undo(done, failed: target, error: error, remaining: targets)
                                 { (binder, report) throws(BusError) in
                    // Back to the user-mode driver it was on before this call.
                    let before = targets.first { $0.device.address == report.device.address }!.device
                    guard let driver = before.driver.flatMap(UserModeDriver.init(rawValue:)) else { return }
                    _ = try binder.bind(.address(before.address), to: driver, force: true)
                })
            }
        }
        if let persist {
            for target in targets { try? persist.set(nil, for: target.device.address) }
            // A removal that failed leaves a file behind: say so rather than claim success.
            for target in targets where (try? persist.override(for: target.device.address)) != nil {
                throw BatchError(failure: BusError(.systemFailure, "cannot remove the persistent override \(persist.file(for: target.device.address))",
                                                   remedy: "run as root, or remove it by hand"),
                                 outcomes: done)
            }
        }
        return done
    }

    // MARK: Helpers

    private struct Target {
        var name: String
        var device: PCIDevice
    }

    /// Resolves every selector, refusing the call if any names no function; a function named
    /// twice (by address and by interface) is taken once.
    private func resolveAll(_ selectors: [DeviceSelector]) throws(BatchError) -> [Target] {
        guard !selectors.isEmpty else {
            let error = BusError(.malformedAddress, "no device named", remedy: "name at least one device, or a class with --class")
            throw BatchError(failure: error, outcomes: [])
        }
        var targets: [Target] = []
        var outcomes: [DeviceOutcome] = []
        var firstFailure: BusError?
        for selector in selectors {
            do throws(BusError) {
                let device = try bus.resolve(selector)
                if !targets.contains(where: { $0.device.address == device.address }) {
                    targets.append(Target(name: selector.description, device: device))
                }
                outcomes.append(DeviceOutcome(name: selector.description, state: .unchanged(device)))
            } catch {
                firstFailure = firstFailure ?? error
                outcomes.append(DeviceOutcome(name: selector.description, state: .refused(error)))
            }
        }
        if let firstFailure { throw BatchError(failure: firstFailure, outcomes: outcomes) }
        return targets
    }

    /// After every function was checked: throws the first refusal (or an override directory
    /// that cannot be written) with every function reported unchanged; true for a dry run,
    /// which ends here with what was checked.
    private func endOfChecks(_ checked: [DeviceOutcome], firstFailure: BusError?, persist: OverrideStore?,
                             dryRun: Bool) throws(BatchError) -> Bool {
        var failure = firstFailure
        if failure == nil, let persist {
            do throws(BusError) { try persist.checkWritable() } catch { failure = error }
        }
        if let failure { throw BatchError(failure: failure, outcomes: unchangedUnlessRefused(checked)) }
        return dryRun
    }

    private func unchangedUnlessRefused(_ outcomes: [DeviceOutcome]) -> [DeviceOutcome] {
        outcomes.map { outcome in
            guard case .done(let report) = outcome.state else { return outcome }
            return DeviceOutcome(name: outcome.name, state: .unchanged(report.device))
        }
    }

    /// Puts back, newest first, the functions `done` changed, after `failed` (if any) failed
    /// with `error`; the functions after it are reported unchanged.
    private func undo(_ done: [DeviceOutcome], failed: Target?, error: BusError, remaining targets: [Target],
                      _ putBack: (PCIBinder, PCIBinder.Report) throws(BusError) -> Void) -> [DeviceOutcome] {
        var outcomes: [DeviceOutcome] = []
        for outcome in done.reversed() {
            guard case .done(let report) = outcome.state, !report.alreadyDone else {
                outcomes.insert(outcome, at: 0)
                continue
            }
            do throws(BusError) {
                try putBack(self, report)
                outcomes.insert(DeviceOutcome(name: outcome.name, state: .undone(report.device)), at: 0)
            } catch {
                outcomes.insert(DeviceOutcome(name: outcome.name, state: .notUndone(report.device, error)), at: 0)
            }
        }
        if let failed {
            outcomes.append(DeviceOutcome(name: failed.name, state: .refused(error)))
            let later = targets.drop { $0.device.address != failed.device.address }.dropFirst()
            outcomes += later.map { DeviceOutcome(name: $0.name, state: .unchanged($0.device)) }
        }
        return outcomes
    }
}

/// The verifier's record of every lock class: where it was used in an ISR and where with
/// interrupts enabled (lockdep's usage states), and the order classes were ever taken in (a
/// graph of class → class edges, each with the sites that made it).
struct LockBook {
    /// One use of a lock class: the function that took it and the context it ran in.
    struct Use {
        var site: String
        var context: ExecutionContext
    }

    struct Usage {
        var inISR: Use?
        var withInterruptsEnabled: Use?
        var reported = false
    }

    /// `to` was taken at `site` while `from` was held (taken at `holderSite`).
    struct Edge {
        var from: LockIdentity
        var to: LockIdentity
        var holderSite: String
        var site: String
        var context: ExecutionContext
    }

    private var usage: [LockIdentity: Usage] = [:]
    private var edges: [LockIdentity: [LockIdentity: Edge]] = [:]

    /// Records that `lock` is taken at `site` while `holding` are held; returns the reports
    /// this new knowledge makes.
    mutating func acquire(_ lock: LockIdentity, at site: String, context: ExecutionContext, interruptsEnabled: Bool,
                          holding: [(LockIdentity, String)]) -> [DriverVerifier.Report] {
        var reports: [DriverVerifier.Report] = []
        if let report = recordUse(lock, at: site, context: context, interruptsEnabled: interruptsEnabled) {
            reports.append(report)
        }
        for (holder, holderSite) in holding where holder != lock && edges[holder]?[lock] == nil {
            if let cycle = path(from: lock, to: holder) {
                reports.append(inversion(taking: lock, at: site, holding: holder, takenAt: holderSite,
                                         context: context, earlier: cycle))
            }
            edges[holder, default: [:]][lock] = Edge(from: holder, to: lock, holderSite: holderSite, site: site, context: context)
        }
        return reports
    }

    private mutating func recordUse(_ lock: LockIdentity, at site: String, context: ExecutionContext,
                                    interruptsEnabled: Bool) -> DriverVerifier.Report? {
        var state = usage[lock] ?? Usage()
        if context.isISR, state.inISR == nil { state.inISR = Use(site: site, context: context) }
        if interruptsEnabled, state.withInterruptsEnabled == nil { state.withInterruptsEnabled = Use(site: site, context: context) }
        defer { usage[lock] = state }
        guard !state.reported, let isr = state.inISR, let enabled = state.withInterruptsEnabled else { return nil }
        state.reported = true
        return DriverVerifier.Report(
            rule: .irqUnsafeLock, locks: [lock.name], sites: [enabled.site, isr.site], context: context.description,
            detail: "\(lock) is taken with interrupts enabled \(enabled.context.phrase) (\(enabled.site)) and \(isr.context.phrase) "
                + "(\(isr.site)): the ISR can interrupt that holder on its CPU and spin or sleep on the lock forever; "
                + "take it with withLock (interrupts disabled) outside the ISR")
    }

    /// The edges of a path of earlier orders from `start` to `goal`, if there is one.
    private func path(from start: LockIdentity, to goal: LockIdentity) -> [Edge]? {
        var reached: [LockIdentity: Edge] = [:]
        var frontier = [start]
        var visited: Set<LockIdentity> = [start]
        while !frontier.isEmpty {
            var next: [LockIdentity] = []
            for node in frontier {
                for (target, edge) in edges[node] ?? [:] where !visited.contains(target) {
                    visited.insert(target)
                    reached[target] = edge
                    if target == goal {
                        var chain: [Edge] = []
                        var cursor = goal
                        while let step = reached[cursor] {
                            chain.insert(step, at: 0)
                            if step.from == start { break }
                            cursor = step.from
                        }
                        return chain
                    }
                    next.append(target)
                }
            }
            frontier = next
        }
        return nil
    }

    private func inversion(taking lock: LockIdentity, at site: String, holding holder: LockIdentity, takenAt holderSite: String,
                           context: ExecutionContext, earlier: [Edge]) -> DriverVerifier.Report {
        let first = earlier[0]
        let earlierText = earlier.map { "\($0.to) taken in \($0.site) while holding \($0.from) \($0.context.phrase)" }
            .joined(separator: ", then ")
        return DriverVerifier.Report(
            rule: .lockOrderInversion, locks: [holder.name] + earlier.map(\.from.name).dropFirst() + [lock.name],
            sites: [site, first.site], context: context.description,
            detail: "\(lock) taken in \(site) while holding \(holder) (taken in \(holderSite)), but earlier \(earlierText): "
                + "two threads taking them in these orders deadlock")
    }
}

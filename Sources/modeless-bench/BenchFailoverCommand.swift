import ArgumentParser
import ModelessCommandLine
import ModelessLogical
import ModelessMeasurement
import ModelessServices
import ModelessSupervision
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

struct BenchFailover: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "failover",
        abstract: "Kill a supervised block service's instance with SIGKILL, again and again, under a write-then-verify workload.",
        discussion: """
            Starts the service of --config (a `modeless supervise` configuration whose instances provide a \
            block device), then writes blocks through a failover client, reading each back at once, while \
            the instance the client uses is killed --kills times at random points. Checks that every write \
            is acknowledged once, every read-back and a final read of every block match, and no request \
            hangs; reports each kill's recovery time (from the kill to the answer to the request sent again). \
            Exits 1 if any check fails. The workload overwrites blocks 0 to --blocks - 1 of the device, so \
            the command refuses to start without --destructive.
            """)

    @Option(help: "The supervisor configuration (JSON) of the block service.")
    var config: String

    @Option(help: "The device each instance provides (its `serve ... --device`).")
    var device = "blk0"

    @Option(help: "How many times to kill an instance.")
    var kills = 100

    @Option(help: "How many distinct blocks the workload writes (from block 0).")
    var blocks = 256

    @Flag(help: "Allow the workload to overwrite blocks 0 to --blocks - 1 of the service's device, destroying what was there.")
    var destructive = false

    @Option(name: .customLong("max-delay-ms"), help: "Each kill comes at a random time up to this long after the previous recovery.")
    var maxDelayMs = 200

    @Option(help: "Seconds a single recovery may take before the run fails.")
    var recoveryTimeout = 60.0

    @OptionGroup var output: BenchOutputOptions

    @OptionGroup var histogram: HistogramPictureOption

    func validate() throws {
        guard kills >= 1, blocks >= 1, maxDelayMs >= 0, recoveryTimeout > 0 else {
            throw ValidationError("--kills and --blocks must be at least 1, --max-delay-ms at least 0, --recovery-timeout positive")
        }
        guard destructive else {
            throw ValidationError("""
                bench failover writes over blocks 0-\(blocks - 1) of device \(device) of the service in \(config), \
                destroying what is there; add --destructive to allow it
                """)
        }
    }

    func run() throws {
        var configuration: SupervisorConfiguration
        do { configuration = try SupervisorConfigurationFile.load(config) } catch let error as ConfigurationFileError { throw ValidationError(error.description) }
        // The kills are the bench's own, not a crash loop: no start limit, and no back-off for
        // instances that had served.
        configuration.startLimitBurst = 0
        configuration.startLimitIntervalSeconds = 0
        let supervisor: Supervisor
        do {
            supervisor = try Supervisor(configuration)
            supervisor.onEvent = { event in
                if !event.message.hasPrefix("started") && event.message != "serving" { printLine("  [\(event.instance)] \(event.message)") }
            }
            try supervisor.start()
        } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
        defer { supervisor.stop() }
        guard supervisor.waitUntilServing(seconds: 120) else {
            printError("the service's instances did not all start serving within 120 s: \(supervisor.instances.map { "\($0.name) \($0.phase)" })")
            throw ExitCode(1)
        }
        let before = counters(configuration)
        let workload: FailoverWorkload
        do {
            workload = try FailoverWorkload(instances: configuration.instanceNames, device: device, blocks: blocks,
                                            recoverySeconds: recoveryTimeout)
        } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
        printLine("\(configuration.service): \(configuration.instances) instance(s) serving; \(kills) kills under write-then-verify on \(blocks) blocks of \(workload.blockSize) bytes")
        printLine("--destructive: overwriting device \(device) of service \(configuration.service), blocks 0-\(blocks - 1) (\(blocks * workload.blockSize) bytes)")
        workload.start()

        var recoveries: [UInt64] = []
        var failure: String?
        let progress = ProgressLine("failover:", total: kills, unit: "kills recovered", report: { printLine($0) })
        for kill in 1...kills {
            guard workload.failure == nil else { break }
            guard supervisor.waitUntilServing(seconds: recoveryTimeout), workload.waitForProgress(seconds: recoveryTimeout) else {
                failure = "kill \(kill): the service did not come back (\(supervisor.instances.map { "\($0.name) \($0.phase)" }))"
                break
            }
            usleep(UInt32.random(in: 0...UInt32(maxDelayMs)) * 1000)
            let target = workload.client.currentInstance ?? configuration.instanceName(0)
            guard let pid = supervisor.instances.first(where: { $0.name == target })?.processID else { continue }
            let failoversBefore = workload.failovers.count
            let killedAt = monotonicNanoseconds()
            Glibc.kill(pid, SIGKILL)
            guard let recovered = workload.waitForFailover(after: failoversBefore, seconds: recoveryTimeout) else {
                failure = "kill \(kill) of \(target) (pid \(pid)): no request was answered by another instance within \(recoveryTimeout) s"
                break
            }
            recoveries.append(recovered - killedAt)
            progress.update(kill)
        }
        workload.stop()
        let verification = workload.verifyAll()
        let after = counters(configuration)

        let sorted = recoveries.sorted()
        func milliseconds(_ value: UInt64) -> String { String(format2: Double(value) / 1e6) }
        printLine("kills:                   \(recoveries.count) of \(kills)")
        printLine("writes acknowledged:     \(workload.writes) (each once), read back and matched: \(workload.verifiedReads)")
        printLine("failovers:               \(workload.failovers.count)")
        printLine("final verify:            \(verification.checked) blocks, \(verification.mismatches) mismatched")
        printLine("provider executions:     \(after.executed - before.executed), answered from a ledger: \(after.replayed - before.replayed)")
        if !sorted.isEmpty {
            printLine("recovery ms:             p50 \(milliseconds(sorted[sorted.count / 2]))  max \(milliseconds(sorted.last!))  min \(milliseconds(sorted.first!))")
        }
        var results = BenchResults(benchmark: "failover", parameters: [
            "config": config, "device": device, "kills": "\(kills)", "blocks": "\(blocks)", "max-delay-ms": "\(maxDelayMs)"])
        // The latency measured: from each SIGKILL to the first request another instance answered.
        results.add("\(configuration.service), \(configuration.instances) instance(s): kill to recovery", [
            "kills": Double(kills), "recovered": Double(recoveries.count), "writesAcknowledged": Double(workload.writes),
            "readsVerified": Double(workload.verifiedReads), "failovers": Double(workload.failovers.count),
            "blocksChecked": Double(verification.checked), "blocksMismatched": Double(verification.mismatches),
            "providerExecutions": Double(after.executed - before.executed), "answeredFromLedger": Double(after.replayed - before.replayed)],
            latency: LatencyHistogram(recoveries))
        let problems = [failure, workload.failure, verification.mismatches > 0 ? "\(verification.mismatches) blocks did not verify" : nil,
                        recoveries.count < kills ? "only \(recoveries.count) of \(kills) kills recovered" : nil].compactMap { $0 }
        guard problems.isEmpty else {
            for problem in problems { printError(problem) }
            throw ExitCode(1)
        }
        printLine("ok: every write acknowledged once, every block verified, no request hung")
        try histogram.write(results, title: "Failover of \(configuration.service), \(configuration.instances) instance(s): SIGKILL to the first request answered, \(recoveries.count) kills", text: output.text)
        try output.finish(results)
    }

    private func counters(_ configuration: SupervisorConfiguration) -> SupervisedInstance.Counters {
        var total = SupervisedInstance.Counters()
        for name in configuration.instanceNames {
            guard let state = try? InstanceStateFile(path: configuration.stateDirectory + "/" + name + ".state", readOnly: true) else { continue }
            defer { state.close() }
            if let counters = state.record.load().flatMap(SupervisedInstance.decode) {
                total.executed += counters.executed
                total.replayed += counters.replayed
            }
        }
        return total
    }
}

extension String {
    /// A number with two decimals.
    init(format2 value: Double) {
        let hundredths = Int((value * 100).rounded())
        let fraction = hundredths % 100
        self = "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }
}

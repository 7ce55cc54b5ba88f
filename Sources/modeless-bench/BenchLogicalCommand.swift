import ArgumentParser
import ModelessCommandLine
import ModelessLogical
import ModelessMeasurement
import ModelessServices
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

struct BenchLogical: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logical",
        abstract: "Logical-device request costs against baselines in the same run.",
        discussion: """
            Starts a peer process (`modeless serve bench-peer`) with echo devices and a raw echo \
            socket, then measures, in interleaved rounds: a request to a device in the same container \
            vs calling its handler directly; a synchronous request to the peer, with each transport \
            (the socket; shared memory without spinning; shared memory with the standard spin), vs a \
            raw Unix-socket ping-pong of a message of the same size between the same two processes; \
            and asynchronous requests per second with --depth in flight. Reports the median of each \
            over the rounds. With --histogram-svg, each round also times every synchronous request on \
            its own (in a pass of its own, after the one timed as a whole) and draws their latencies.
            """)

    @Option(help: "Requests per measurement.")
    var requests = 20000

    @Option(help: "Rounds (interleaved); medians are reported.")
    var rounds = 5

    @Option(help: "Asynchronous requests in flight.")
    var depth = 32

    @Option(name: .customLong("payload"), help: "Bytes of input (echoed as output) per request.")
    var payload = 64

    @OptionGroup var output: BenchOutputOptions

    @OptionGroup var histogram: HistogramPictureOption

    func run() throws {
        let directory = ContainerDirectory.standard
        try directory.prepare()
        let peerName = "bench-peer-\(getpid())"
        let rawPath = directory.path + "/\(peerName).raw"
        let peer = try ChildProcess(try ProgramRunner.builtProgram("modeless"), ["serve", "bench-peer", "--container", peerName, "--raw-socket", rawPath])
        defer {
            peer.signal(SIGTERM)
            _ = try? peer.wait()
            unlink(rawPath)
        }
        guard let line = peer.readLine(), line.hasPrefix("serving") else {
            printError("the benchmark's peer process did not start")
            throw ExitCode(1)
        }
        let local = try LogicalContainer(name: "bench-\(getpid())", serving: false)
        try local.createDevice("echo", handlers: EchoDevice.handlers)
        let localHandle = try local.open("echo")
        let remoteHandle = try local.open("\(peerName)/echo")
        let overSocket = try LogicalContainer(name: "bench-\(getpid())-socket", serving: false, transport: .socket)
        let socketHandle = try overSocket.open("\(peerName)/echo")
        let withoutSpin = try LogicalContainer(
            name: "bench-\(getpid())-nospin", serving: false, transport: .init(sharedMemory: true, spin: .zero))
        let noSpinHandle = try withoutSpin.open("\(peerName)-nospin/echo")
        guard local.sharesMemory(remoteHandle), withoutSpin.sharesMemory(noSpinHandle), !overSocket.sharesMemory(socketHandle) else {
            printError("the peer did not take the shared-memory channel")
            throw ExitCode(1)
        }
        let raw = try UnixSocket.connect(to: rawPath)

        let chain = try ParameterChain(blocks: 1, inputCapacity: payload, outputCapacity: payload)
        let block = try chain.claimBlock()
        block.requestType = .read
        try block.input.setBytes((0..<payload).map { UInt8($0 & 0xFF) })
        let messageBytes = 32 + 4 + 144 + 2 * payload  // message header, chain prefix, block header, areas

        var samples: [String: [Double]] = [:]
        // With --histogram-svg: every synchronous request's latency, timed in passes of their own
        // so that the clock reads do not change the per-request means of the table.
        var latencies: [String: LatencyHistogram] = [:]
        let rawBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 8)
        defer { rawBuffer.deallocate() }
        rawBuffer.initializeMemory(as: UInt8.self, repeating: 1)
        for _ in 0..<rounds {
            samples["direct", default: []].append(try measure { try EchoDevice.echo(block) })
            samples["local", default: []].append(try measure { try local.send(localHandle, block) })
            samples["raw", default: []].append(try rawPingPong(raw, bytes: messageBytes))
            samples["socket", default: []].append(try measure { try overSocket.send(socketHandle, block) })
            samples["nospin", default: []].append(try measure { try withoutSpin.send(noSpinHandle, block) })
            samples["remote", default: []].append(try measure { try local.send(remoteHandle, block) })
            samples["async", default: []].append(try asyncRate(local, remoteHandle))
            if histogram.histogramSVG != nil {
                latencies["direct", default: .init()].add(try timeEach { try EchoDevice.echo(block) })
                latencies["local", default: .init()].add(try timeEach { try local.send(localHandle, block) })
                latencies["raw", default: .init()].add(try timeEach { try rawExchange(raw, rawBuffer, bytes: messageBytes) })
                latencies["socket", default: .init()].add(try timeEach { try overSocket.send(socketHandle, block) })
                latencies["nospin", default: .init()].add(try timeEach { try withoutSpin.send(noSpinHandle, block) })
                latencies["remote", default: .init()].add(try timeEach { try local.send(remoteHandle, block) })
            }
        }
        let median = samples.mapValues { $0.sorted()[$0.count / 2] }
        printLine("logical devices: \(requests) requests x \(rounds) rounds, \(payload)-byte payload, message \(messageBytes) bytes")
        printLine("| measurement | ns per request | ratio to baseline |")
        printLine("| --- | ---: | ---: |")
        printLine("| direct Swift call of the handler (baseline) | \(format(median["direct"]!)) | 1.00 |")
        printLine("| request to a device in the same container | \(format(median["local"]!)) | \(format(median["local"]! / median["direct"]!, 2)) |")
        printLine("| raw Unix-socket ping-pong, \(messageBytes) bytes (baseline) | \(format(median["raw"]!)) | 1.00 |")
        printLine("| synchronous request to another process, socket | \(format(median["socket"]!)) | \(format(median["socket"]! / median["raw"]!, 2)) |")
        printLine("| synchronous request to another process, shared memory, no spin | \(format(median["nospin"]!)) | \(format(median["nospin"]! / median["raw"]!, 2)) |")
        printLine("| synchronous request to another process, shared memory, \(spinText(local.transport)) spin (standard) | \(format(median["remote"]!)) | \(format(median["remote"]! / median["raw"]!, 2)) |")
        printLine("| asynchronous requests to another process, \(depth) in flight | \(format(median["async"]!)) | \(format(median["async"]! / median["raw"]!, 2)) |")
        printLine("asynchronous: \(format(1e9 / median["async"]!)) requests/s; synchronous: \(format(1e9 / median["remote"]!)) round trips/s")
        var results = BenchResults(benchmark: "logical", parameters: [
            "requests": "\(requests)", "rounds": "\(rounds)", "depth": "\(depth)", "payload": "\(payload)"])
        for (key, name, baseline) in [("direct", "direct Swift call of the handler (baseline)", "direct"),
                                      ("local", "request to a device in the same container", "direct"),
                                      ("raw", "raw Unix-socket ping-pong, \(messageBytes) bytes (baseline)", "raw"),
                                      ("socket", "synchronous request to another process, socket", "raw"),
                                      ("nospin", "synchronous request to another process, shared memory, no spin", "raw"),
                                      ("remote", "synchronous request to another process, shared memory, \(spinText(local.transport)) spin (standard)", "raw"),
                                      ("async", "asynchronous requests to another process, \(depth) in flight", "raw")] {
            results.add(name, ["nanosecondsPerRequest": median[key]!, "ratioToBaseline": median[key]! / median[baseline]!,
                               "roundsNanosecondsPerRequestMin": samples[key]!.min()!, "roundsNanosecondsPerRequestMax": samples[key]!.max()!],
                        latency: latencies[key])
        }
        try overSocket.close(socketHandle)
        try withoutSpin.close(noSpinHandle)
        overSocket.shutdown()
        withoutSpin.shutdown()
        try local.close(remoteHandle)
        try local.close(localHandle)
        local.shutdown()
        try histogram.write(results, title: "Logical-device requests, \(payload)-byte payload: each synchronous request timed on its own, \(requests) x \(rounds) rounds", text: output.text)
        try output.finish(results)
    }

    /// Nanoseconds per call of `body`, over `requests` calls.
    private func measure(_ body: () throws -> Void) throws -> Double {
        let start = monotonicNanoseconds()
        for _ in 0..<requests { try body() }
        return Double(monotonicNanoseconds() - start) / Double(requests)
    }

    /// The latency of each of `requests` calls of `body`, in nanoseconds.
    private func timeEach(_ body: () throws -> Void) throws -> LatencyHistogram {
        var histogram = LatencyHistogram()
        for _ in 0..<requests {
            let start = monotonicNanoseconds()
            try body()
            histogram.record(monotonicNanoseconds() - start)
        }
        return histogram
    }

    private func rawPingPong(_ socket: UnixSocket, bytes: Int) throws -> Double {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 1)
        return try measure { try rawExchange(socket, buffer, bytes: bytes) }
    }

    /// Sends `bytes` of `buffer` over `socket` and receives them back.
    private func rawExchange(_ socket: UnixSocket, _ buffer: UnsafeMutableRawBufferPointer, bytes: Int) throws {
        try socket.send(UnsafeRawBufferPointer(rebasing: buffer[0..<bytes]))
        guard try socket.receive(into: buffer) == bytes else { throw ExitCode(1) }
    }

    /// Nanoseconds per request with `depth` asynchronous requests kept in flight.
    private func asyncRate(_ container: LogicalContainer, _ handle: LogicalDeviceHandle) throws -> Double {
        let done = ConditionLock()
        nonisolated(unsafe) var completed = 0
        nonisolated(unsafe) var failure: LogicalDeviceError?
        let chains = try (0..<depth).map { _ in try ParameterChain(blocks: 1, inputCapacity: payload, outputCapacity: payload) }
        let total = requests
        let start = monotonicNanoseconds()
        @Sendable func submit(_ chain: ParameterChain) {
            chain.reset()
            do {
                let block = try chain.claimBlock()
                block.requestType = .read
                try block.input.setLength(payload)
                try container.send(handle, block, context: chain) { result, chain in
                    let next = done.withLock { () -> Bool in
                        if case .failure(let error) = result { failure = error }
                        completed += 1
                        if completed == total || failure != nil { done.broadcast() }
                        return completed + depth <= total && failure == nil
                    }
                    if next { submit(chain) }
                }
            } catch {
                done.withLock {
                    failure = error
                    done.broadcast()
                }
            }
        }
        for chain in chains.prefix(min(depth, total)) { submit(chain) }
        try done.withLock { () throws in
            while completed < total && failure == nil { done.wait() }
            if let failure { throw failure }
        }
        return Double(monotonicNanoseconds() - start) / Double(total)
    }

    private func spinText(_ transport: RequestTransport) -> String {
        "\(transport.spin.wholeNanoseconds / 1000) µs"
    }

    private func format(_ value: Double, _ decimals: Int = 0) -> String {
        decimals == 0 ? String(Int(value.rounded())) : fixed(value, decimals)
    }
}


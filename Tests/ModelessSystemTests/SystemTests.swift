import Glibc
import ModelessSystem
import Testing

func temporaryDirectory() throws -> String {
    var template = Array("/tmp/modeless-system-XXXXXX".utf8CString)
    guard let made = mkdtemp(&template) else { throw SystemError("mkdtemp", "/tmp", errno: .current) }
    return String(cString: made)
}

@Suite struct FileAccessTests {
    @Test func writesReadsAndReplacesFiles() throws {
        let directory = try temporaryDirectory()
        defer { _ = try? ProgramRunner.run("rm", ["-rf", directory]) }
        let file = "\(directory)/a/b/attribute"
        try FileAccess.createDirectories("\(directory)/a/b")
        try FileAccess.replaceFile(file, with: Array("  0x8086\n".utf8))
        #expect(try FileAccess.readText(file) == "0x8086")
        // Like a sysfs attribute: written in place, one write, no truncation.
        try FileAccess.writeText("vfio-pci", to: file)
        #expect(try FileAccess.readText(file) == "vfio-pci")
        #expect(try FileAccess.listDirectory("\(directory)/a/b") == ["attribute"])
        #expect(FileAccess.exists(file) && !FileAccess.isDirectory(file) && FileAccess.isDirectory(directory))
        symlink("../../../bus/pci/drivers/e1000", "\(directory)/driver")
        #expect(FileAccess.linkTargetName("\(directory)/driver") == "e1000")
        #expect(FileAccess.linkTargetName("\(directory)/none") == nil)
    }

    @Test func errorsNameTheOperationThePathAndErrno() {
        let error = #expect(throws: SystemError.self) { try FileAccess.readText("/nonexistent/modeless") }
        #expect(error?.operation == "open")
        #expect(error?.subject == "/nonexistent/modeless")
        #expect(error?.errno == .noSuchFileOrDirectory)
        #expect(error?.description == "open /nonexistent/modeless: No such file or directory (errno 2)")
        let writeError = #expect(throws: SystemError.self) { try FileAccess.writeText("x", to: "/nonexistent/attribute") }
        #expect(writeError?.operation == "open" && writeError?.errno == .noSuchFileOrDirectory)
    }

    @Test func readsAreBounded() throws {
        #expect(try FileAccess.readBytes("/dev/zero", limit: 10000).count == 10000)
    }

    @Test func trimsBlanks() {
        #expect(" \t0x1\n\n".trimmingBlanks() == "0x1")
        #expect("\n".trimmingBlanks() == "")
    }
}

@Suite struct ProgramRunnerTests {
    @Test func capturesOutputAndStatus() throws {
        let result = try ProgramRunner.run("sh", ["-c", "echo out; echo err >&2; exit 3"])
        #expect(result.status == 3)
        #expect(result.output == "out\nerr\n")
    }

    @Test func reportsSignals() throws {
        #expect(try ProgramRunner.run("sh", ["-c", "kill -9 $$"]).status == 128 + 9)
    }

    @Test func aMissingProgramIsAnError() {
        let error = #expect(throws: SystemError.self) { try ProgramRunner.run("modeless-no-such-program", []) }
        #expect(error?.errno == .noSuchFileOrDirectory)
    }
}

/// A spawned program gets its standard descriptors (and the one it is given to keep) and
/// nothing else of this process, not even a descriptor opened without close-on-exec.
@Suite struct SpawnedDescriptorTests {
    /// The descriptors `ls /proc/self/fd` lists in the child, minus the one `ls` reads them through.
    static func descriptors(in lines: some Sequence<some StringProtocol>) -> Set<Int32> {
        Set(lines.flatMap { $0.split(whereSeparator: { $0 == " " || $0 == "\n" }) }.compactMap { Int32($0) })
    }

    /// Runs `body` with a descriptor of /dev/null at 200 or above that lacks close-on-exec.
    static func withInheritable(_ body: (Int32) throws -> Void) throws {
        let opened = open("/dev/null", O_RDONLY)
        try #require(opened >= 0)
        let high = fcntl(opened, F_DUPFD, 200)  // F_DUPFD: the copy lacks close-on-exec
        close(opened)
        try #require(high >= 200 && fcntl(high, F_GETFD) & FD_CLOEXEC == 0)
        defer { close(high) }
        try body(high)
    }

    @Test func programRunnerChildrenInheritNothingElse() throws {
        try Self.withInheritable { high in
            let listed = try ProgramRunner.run("ls", ["/proc/self/fd"])
            #expect(listed.status == 0)
            let seen = Self.descriptors(in: listed.output.split(separator: "\n"))
            #expect(seen.isSuperset(of: [0, 1, 2]) && !seen.contains(high), "\(listed.output)")
            #expect(seen.count <= 4, "0-2 and the one ls reads through: \(seen.sorted())")
        }
    }

    @Test(arguments: [nil, ChildProcess.Containment(deathSignal: SIGKILL), ChildProcess.Containment(guarded: true)])
    func childProcessesInheritNothingElse(_ containment: ChildProcess.Containment?) throws {
        try Self.withInheritable { high in
            let kept = open("/dev/null", O_RDONLY | O_CLOEXEC)
            try #require(kept >= 0)
            defer { close(kept) }
            var given = containment
            given?.inherited = kept
            let child = try ChildProcess("ls", ["/proc/self/fd"], containment: given)
            var lines: [String] = []
            while let line = child.readLine(timeout: 10) { lines.append(line) }
            #expect(try child.wait() == 0)
            let seen = Self.descriptors(in: lines)
            #expect(seen.isSuperset(of: [0, 1, 2]) && !seen.contains(high), "\(lines)")
            if containment != nil { #expect(seen.contains(kept), "the descriptor given to keep: \(lines)") }
            #expect(seen.count <= (containment != nil ? 5 : 4), "0-2, the one kept, the one ls reads through: \(seen.sorted())")
        }
    }
}

@Suite struct EventNotifierTests {
    @Test func signalsAccumulateUntilRead() throws {
        let notifier = try EventNotifier()
        try notifier.signal()
        try notifier.signal(2)
        #expect(try notifier.wait() == 3)
        notifier.close()
        notifier.close()
    }

    @Test func nonBlockingWaitWithNothingPendingIsEAGAIN() throws {
        let notifier = try EventNotifier(nonBlocking: true)
        let error = #expect(throws: SystemError.self) { try notifier.wait() }
        #expect(error?.errno == .resourceTemporarilyUnavailable)
    }

    @Test func wakesAWaitingThread() async throws {
        let notifier = try EventNotifier()
        async let woken = Task.detached { try notifier.wait() }.value
        try await Task.sleep(for: .milliseconds(20))
        try notifier.signal()
        #expect(try await woken == 1)
    }
}

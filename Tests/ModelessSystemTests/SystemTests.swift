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

import ArgumentParser
import ModelessCommandLine
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// `modeless bench …`: the benchmarks are their own program, `modeless-bench`, installed beside
/// `modeless` (docs/benchmarks.md); this command runs it in this process's place with the same
/// arguments, so its output, exit status and signals are the benchmark's own.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure the runtime against baselines taken in the same run (runs modeless-bench).",
        discussion: """
            The benchmarks are the program modeless-bench beside modeless; `modeless bench ARGS` runs \
            `modeless-bench ARGS`. `modeless bench --help` lists them.
            """)

    @Argument(parsing: .captureForPassthrough, help: "The benchmark and its arguments.")
    var arguments: [String] = []

    func run() throws {
        try BenchForwarding.replaceProcess(with: arguments)
    }
}

/// Runs `modeless-bench` in place of this process.
enum BenchForwarding {
    /// The benchmarks' program, looked for in the directory of the running `modeless`.
    static let program = "modeless-bench"

    /// The arguments after `bench` when `arguments` (a whole command line, program name first)
    /// asks for a benchmark; nil otherwise.
    static func benchArguments(_ arguments: [String]) -> [String]? {
        arguments.count >= 2 && arguments[1] == "bench" ? Array(arguments.dropFirst(2)) : nil
    }

    /// Replaces this process with `modeless-bench arguments`; returns only by throwing, when
    /// the program is missing (exit status 1, saying how to build or install it) or cannot run.
    static func replaceProcess(with arguments: [String]) throws(ExitCode) -> Never {
        let path: String
        do { path = try ProgramRunner.builtProgram(program) } catch {
            printError("cannot find \(program): \(error)")
            throw ExitCode(1)
        }
        guard access(path, X_OK) == 0 else {
            printError("""
                \(path) is missing or not executable: `modeless bench` runs the benchmarks' program, \(program), installed beside modeless
                  hint: build it with `swift build --product \(program)` (with -c release for numbers to keep), or install both with scripts/install
                """)
            throw ExitCode(1)
        }
        fflush(nil)
        var argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        execv(path, &argv)
        let failure = errno
        for pointer in argv { free(pointer) }
        printError("cannot run \(path): \(String(cString: strerror(failure)))")
        throw ExitCode(1)
    }
}

import Foundation
import ModelessSystem
import Testing

#if canImport(FoundationXML)
import FoundationXML
#endif
#if canImport(Glibc)
import Glibc
#endif

/// `--histogram-svg FILE` on every benchmark that times single operations, each in a short run
/// against the models: the file is well-formed XML (an SVG document) with one step curve of
/// histogram bars per measurement, and the legend names each with its sample count.
@Suite("Command line: bench … --histogram-svg", .serialized)
struct HistogramPictureTests {
    /// What a picture holds: its root element, and for each curve its points and legend line.
    struct Picture {
        var root = ""
        var curves: [[(x: Double, y: Double)]] = []
        var texts: [String] = []
        var width = 0.0, height = 0.0
    }

    /// Reads an SVG file with an XML parser, failing on anything that is not well-formed.
    final class PictureReader: NSObject, XMLParserDelegate {
        var picture = Picture()
        private var text: String?

        func parser(_ parser: XMLParser, didStartElement element: String, namespaceURI: String?, qualifiedName: String?,
                    attributes: [String: String] = [:]) {
            if picture.root.isEmpty {
                picture.root = element
                picture.width = Double(attributes["width"] ?? "") ?? 0
                picture.height = Double(attributes["height"] ?? "") ?? 0
            }
            if element == "polyline" {
                picture.curves.append((attributes["points"] ?? "").split(separator: " ").compactMap { pair in
                    let numbers = pair.split(separator: ",").compactMap { Double($0) }
                    return numbers.count == 2 ? (numbers[0], numbers[1]) : nil
                })
            }
            if element == "text" { text = "" }
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) { text? += string }

        func parser(_ parser: XMLParser, didEndElement element: String, namespaceURI: String?, qualifiedName: String?) {
            if element == "text", let text { picture.texts.append(text) }
            text = nil
        }
    }

    /// Runs `modeless ARGUMENTS` (DIR in them is a fresh directory, which also holds the
    /// containers), expects success, and reads the picture it wrote to DIR/h.svg.
    func picture(_ arguments: [String], setUp: (String) throws -> Void = { _ in }) throws -> (picture: Picture, output: String) {
        var template = Array("/tmp/mlh-XXXXXX".utf8CString)
        let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { _ = try? ProgramRunner.run("/bin/rm", ["-rf", directory]) }
        try setUp(directory)
        let quoted = (arguments + ["--histogram-svg", "DIR/h.svg"]).map { "'\($0.replacingOccurrences(of: "DIR", with: directory))'" }.joined(separator: " ")
        let result = try ProgramRunner.run("/bin/sh", ["-c", #"MODELESS_CONTAINER_DIR="$1/containers" "$0" \#(quoted) 2>&1"#, try modelessPath(), directory])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("histogram picture written to \(directory)/h.svg"), "\(result.output)")
        let data = try #require(FileManager.default.contents(atPath: directory + "/h.svg"), "no picture: \(result.output)")
        let parser = XMLParser(data: data)
        let reader = PictureReader()
        parser.delegate = reader
        #expect(parser.parse(), "not well-formed XML: \(parser.parserError.map { "\($0)" } ?? "")")
        return (reader.picture, result.output)
    }

    /// Checks that `picture` is an SVG with `curves` curves (one per name in `names` when nil),
    /// each a run of bars inside the picture, and a legend line for each of `names` with its
    /// samples (`count` where given).
    func expectHistograms(_ picture: Picture, names: [String], curves: Int? = nil, count: Int? = nil) {
        #expect(picture.root == "svg")
        #expect(picture.curves.count == curves ?? names.count, "\(picture.curves.count) curves for \(names)")
        for curve in picture.curves {
            // A bar is a rise, a top and a fall: at least one bar, and every point on the canvas.
            #expect(curve.count >= 4, "\(curve)")
            #expect(curve.allSatisfy { (0...picture.width).contains($0.x) && (0...picture.height).contains($0.y) }, "\(curve)")
            #expect(curve.contains { $0.y < curve[0].y }, "a curve with no bar above its base: \(curve)")
        }
        for name in names {
            let legend = picture.texts.first { $0.hasPrefix(name + ": p50 ") }
            #expect(legend != nil, "no legend line for \(name): \(picture.texts)")
            if let legend, let count { #expect(legend.hasSuffix(", n \(count)"), "\(legend)") }
        }
    }

    @Test func nvmeOnTheModelDrawsEachQueueDepth() throws {
        let (picture, output) = try picture(["bench", "nvme", "--model", "--seconds", "0.2", "--depths", "1", "4"])
        expectHistograms(picture, names: ["Modeless NVMe, user, msix, depth 1", "Modeless NVMe, user, msix, depth 4"])
        #expect(picture.texts.contains { $0.hasPrefix("NVMe 4 KiB random reads on the NVMe model") }, "\(picture.texts)\n\(output)")
    }

    @Test func logicalDrawsEverySynchronousRequest() throws {
        let requests = 200
        let (picture, _) = try picture(["bench", "logical", "--requests", "\(requests)", "--rounds", "1"])
        expectHistograms(picture, names: ["direct Swift call of the handler (baseline)", "request to a device in the same container",
                                          "synchronous request to another process, socket",
                                          "synchronous request to another process, shared memory, no spin"], curves: 6, count: requests)
        // The raw ping-pong's and the standard transport's names carry the message size and the spin.
        #expect(picture.texts.filter { $0.hasPrefix("raw Unix-socket ping-pong, ") || $0.hasPrefix("synchronous request to another process, shared memory, ") }
                    .count == 3, "\(picture.texts)")
    }

    @Test func interruptPathDrawsEachInterrupt() throws {
        let (picture, _) = try picture(["bench", "interrupt-path", "--interrupts", "200"])
        expectHistograms(picture, names: ["user msi: raise to DPC, one at a time"], count: 200)
    }

    @Test func interruptDatapathDrawsEachFrame() throws {
        let (picture, _) = try picture(["bench", "interrupt-datapath", "--path", "e1000-intx", "--count", "100"])
        expectHistograms(picture, names: ["e1000 model, user, intx: send to receive, one frame at a time"], count: 100)
        let refused = try modeless("bench", "interrupt-datapath", "--path", "nvme-msix", "--count", "10", "--histogram-svg", "/tmp/unused.svg")
        #expect(refused.status == 64 && refused.output.contains("--histogram-svg needs a path that times each operation"), "\(refused.output)")
    }

    @Test func failoverDrawsItsRecoveries() throws {
        let kills = 3
        let (picture, _) = try picture(["bench", "failover", "--config", "DIR/service.json", "--device", "disk", "--destructive",
                                        "--kills", "\(kills)", "--blocks", "64", "--max-delay-ms", "20"]) { directory in
            let command = #"["modeless", "serve", "nvme", "--model", "\#(directory)/disk.img", "--model-blocks", "2048", "--irq", "poll", "--device", "disk"]"#
            try FileAccess.replaceFile(directory + "/service.json", with: Array("""
                {"service": "svc", "instances": 2, "stateDirectory": "\(directory)/state", "command": \(command)}
                """.utf8))
        }
        expectHistograms(picture, names: ["svc, 2 instance(s): kill to recovery"], count: kills)
    }
}

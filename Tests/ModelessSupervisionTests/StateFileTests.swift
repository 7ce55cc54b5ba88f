import ModelessLogical
import ModelessSystem
import Testing
@testable import ModelessSupervision

#if canImport(Glibc)
import Glibc
#endif

/// A fresh private directory for one test.
func temporaryDirectory() -> String {
    var template = Array("/tmp/mls-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
}

@Suite("Supervision: instance state files")
struct StateFileTests {
    @Test func aSavedRecordSurvivesReopeningAndTheNewestWins() throws {
        let path = temporaryDirectory() + "/a.state"
        let state = try InstanceStateFile(path: path)
        #expect(state.record.load() == nil)
        try state.record.save([1, 2, 3])
        try state.record.save([4, 5])
        state.close()
        let again = try InstanceStateFile(path: path)
        #expect(again.record.load() == [4, 5])
        #expect(throws: SupervisionError.self) { try again.record.save([UInt8](repeating: 0, count: SavedRecord.capacity + 1)) }
    }

    @Test func aSaveCutShortLeavesThePreviousRecord() throws {
        let path = temporaryDirectory() + "/a.state"
        let state = try InstanceStateFile(path: path)
        try state.record.save([7, 7, 7])
        try state.record.save([8, 8, 8])
        // A process killed mid-save: the newest slot's sequence is still zero...
        let newest = InstanceStateFile.recordOffset + SavedRecord.slotSize * 1
        state.file.storeRelease(0, at: newest)
        #expect(state.record.load() == [7, 7, 7])
        // ...or its sequence is written but its bytes do not match the checksum.
        try state.record.save([9, 9, 9])
        state.file.write([0xEE], at: InstanceStateFile.recordOffset + SavedRecord.slotHeader + SavedRecord.slotSize * 1)
        #expect(state.record.load() == [7, 7, 7])
    }

    @Test func theLedgerRecordsBeginAndCompletionAndIgnoresTornEntries() throws {
        let state = try InstanceStateFile(path: temporaryDirectory() + "/a.state")
        let first = state.ledger.begin(0x10)
        let second = state.ledger.begin(0x20)
        #expect(Set(state.ledger.inFlight()) == [0x10, 0x20])
        state.ledger.complete(first, requestID: 0x10, failure: nil, outputLength: 0)
        state.ledger.complete(second, requestID: 0x20, failure: .tooLarge, outputLength: 0)
        #expect(state.ledger.inFlight().isEmpty)
        #expect(state.ledger.completed(0x10) == .init(requestID: 0x10, progress: .completed, failure: nil, outputLength: 0))
        #expect(state.ledger.completed(0x20)?.failure == .tooLarge)
        #expect(state.ledger.completed(0x30) == nil)
        // A torn entry (its id changed without a new seal) reads as absent, never as another request.
        state.file.store(UInt64(0x30), at: InstanceStateFile.ledgerOffset + RequestLedger.entriesOffset + first * RequestLedger.entrySize)
        #expect(state.ledger.completed(0x10) == nil)
        #expect(state.ledger.completed(0x30) == nil)
    }

    @Test func aReplacementMarksItsPredecessorsRequestsInterrupted() throws {
        let directory = temporaryDirectory()
        let dead = try SupervisedInstance(name: "s-0", statePath: directory + "/s-0.state", stateDirectory: directory)
        _ = dead.state.ledger.begin(0xAA)
        _ = dead.state.ledger.begin(0xBB)
        dead.state.close()
        let replacement = try SupervisedInstance(name: "s-0", statePath: directory + "/s-0.state", stateDirectory: directory)
        #expect(replacement.start == 2)
        #expect(Set(replacement.interruptedRequests) == [0xAA, 0xBB])
        #expect(replacement.state.ledger.inFlight().isEmpty)
    }

    @Test func aFileThatIsNotAStateFileIsRefusedAndLeftAsItWas() throws {
        let path = temporaryDirectory() + "/other"
        try FileAccess.replaceFile(path, with: Array("not a state file".utf8))
        #expect(throws: SupervisionError.self) { try InstanceStateFile(path: path) }
        #expect(try FileAccess.readText(path) == "not a state file")
        let wrongSize = temporaryDirectory() + "/x.state"
        try FileAccess.replaceFile(wrongSize, with: [UInt8](repeating: 0, count: 100))
        #expect(throws: SupervisionError.self) { try InstanceStateFile(path: wrongSize) }
    }
}

// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Fixtures} from "./utils/Fixtures.sol";
import {Staking} from "../src/Staking.sol";
import {Receipt, Verdict, VeriswarmHashes} from "../src/VeriswarmTypes.sol";

/// @notice Cross-language EIP-712 test vector for the Python side (test/vectors/receipt_vector.json).
/// By default the test recomputes everything and checks it against the committed file; run with
/// `WRITE_VECTORS=true forge test --match-contract ReceiptVectorTest` to regenerate it.
/// The contract is placed (vm.etch) at a fixed address so the vector does not depend on test
/// deployment order: 0x5FbDB2315678afecb367f032d93F642f64180aa3 is what the first contract
/// deployed by anvil's default account #0 gets.
contract ReceiptVectorTest is Fixtures {
    string internal constant PATH = "test/vectors/receipt_vector.json";
    address internal constant VERIFYING_CONTRACT = 0x5FbDB2315678afecb367f032d93F642f64180aa3;
    uint256 internal constant CHAIN_ID = 31337;
    /// @dev anvil account #1 (address 0x70997970C51812dc3A010C7d01b50e0d17dc79C8).
    uint256 internal constant NODE_KEY = 0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d;
    /// @dev anvil account #2 (address 0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC), as a verifier.
    uint256 internal constant VERIFIER_KEY = 0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a;

    Staking internal at; // Staking runtime code at VERIFYING_CONTRACT

    function setUp() public {
        vm.chainId(CHAIN_ID);
        deployStaking();
        vm.etch(VERIFYING_CONTRACT, address(staking).code);
        at = Staking(VERIFYING_CONTRACT);
    }

    function _receiptA() internal pure returns (Receipt memory) {
        return Receipt({
            manifestHash: keccak256("veriswarm/vector/manifest"),
            shardIndex: 3,
            sessionId: keccak256("veriswarm/vector/session"),
            step: 7,
            startPos: 128,
            numTokens: 16,
            inputHash: keccak256("veriswarm/vector/input"),
            contextHash: keccak256("veriswarm/vector/context"),
            outputHash: keccak256("veriswarm/vector/output-a"),
            requestNonce: keccak256("veriswarm/vector/nonce-a"),
            timestampMs: 1_700_000_000_123
        });
    }

    function _receiptB() internal pure returns (Receipt memory r) {
        r = _receiptA();
        r.outputHash = keccak256("veriswarm/vector/output-b");
        r.requestNonce = keccak256("veriswarm/vector/nonce-b");
        r.timestampMs = 1_700_000_000_456;
    }

    function _verdict() internal pure returns (Verdict memory) {
        return Verdict({
            node: 0x70997970C51812dc3A010C7d01b50e0d17dc79C8,
            evidenceHash: keccak256("veriswarm/vector/evidence"),
            slashBps: 2_500,
            deadline: 1_800_000_000
        });
    }

    function _domainSeparator() internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("veriswarm"),
                keccak256("1"),
                CHAIN_ID,
                VERIFYING_CONTRACT
            )
        );
    }

    /// @dev The contract and an independent from-scratch computation agree.
    function test_vector_contractMatchesIndependentDigest() public view {
        assertEq(at.domainSeparator(), _domainSeparator(), "domain separator");
        Receipt memory a = _receiptA();
        bytes32 structHash = keccak256(abi.encode(VeriswarmHashes.RECEIPT_TYPEHASH, a));
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", _domainSeparator(), structHash));
        assertEq(at.receiptDigest(a), digest, "receipt digest");
    }

    /// @dev The committed JSON matches what the contract computes (or is rewritten on request).
    function test_vector_matchesCommittedFile() public {
        string memory json = _render();
        if (vm.envOr("WRITE_VECTORS", false)) {
            vm.writeFile(PATH, json);
            return;
        }
        string memory file = vm.readFile(PATH);
        assertEq(keccak256(bytes(file)), keccak256(bytes(json)), "receipt_vector.json is stale; regenerate");
        // spot-check parsed fields too, so a reader can trust the JSON keys
        assertEq(vm.parseJsonBytes32(file, ".receiptA.digest"), at.receiptDigest(_receiptA()), "digest A");
        assertEq(vm.parseJsonBytes32(file, ".receiptB.digest"), at.receiptDigest(_receiptB()), "digest B");
        assertEq(vm.parseJsonAddress(file, ".signer"), vm.addr(NODE_KEY), "signer");
        assertEq(vm.parseJsonUint(file, ".domain.chainId"), CHAIN_ID, "chainId");
    }

    /// @dev The vector's two receipts really are a slashable equivocation.
    function test_vector_equivocationSlashes() public {
        vm.deal(vm.addr(NODE_KEY), 2 ether);
        vm.prank(vm.addr(NODE_KEY));
        at.register{value: 2 ether}("http://vector", 3, _receiptA().manifestHash);
        bytes memory sa = signDigest(NODE_KEY, at.receiptDigest(_receiptA()));
        bytes memory sb = signDigest(NODE_KEY, at.receiptDigest(_receiptB()));
        vm.deal(address(this), BOND);
        uint256 id = at.slashEquivocation{value: BOND}(_receiptA(), sa, _receiptB(), sb);
        (address node,,,,,,,) = at.slashes(id);
        assertEq(node, vm.addr(NODE_KEY));
    }

    function _receiptJson(Receipt memory r, bytes32 structHash, bytes32 digest, bytes memory sig)
        internal
        pure
        returns (string memory)
    {
        string memory fields = string.concat(
            '{"manifestHash":"',
            vm.toString(r.manifestHash),
            '","shardIndex":',
            vm.toString(uint256(r.shardIndex)),
            ',"sessionId":"',
            vm.toString(r.sessionId),
            '","step":',
            vm.toString(uint256(r.step)),
            ',"startPos":',
            vm.toString(uint256(r.startPos)),
            ',"numTokens":',
            vm.toString(uint256(r.numTokens)),
            ',"inputHash":"',
            vm.toString(r.inputHash)
        );
        fields = string.concat(
            fields,
            '","contextHash":"',
            vm.toString(r.contextHash),
            '","outputHash":"',
            vm.toString(r.outputHash),
            '","requestNonce":"',
            vm.toString(r.requestNonce),
            '","timestampMs":',
            vm.toString(uint256(r.timestampMs)),
            "}"
        );
        return string.concat(
            '{"message":',
            fields,
            ',"structHash":"',
            vm.toString(structHash),
            '","digest":"',
            vm.toString(digest),
            '","signature":"',
            vm.toString(sig),
            '"}'
        );
    }

    function _render() internal view returns (string memory json) {
        Receipt memory a = _receiptA();
        Receipt memory b = _receiptB();
        bytes32 digestA = at.receiptDigest(a);
        bytes32 digestB = at.receiptDigest(b);
        json = string.concat(
            "{\n",
            '  "description":"EIP-712 Receipt/Verdict vectors for veriswarm (generated by contracts/test/ReceiptVector.t.sol). receiptA and receiptB conflict (same manifestHash, shardIndex, contextHash; different outputHash). Signatures are 65-byte r||s||v with v in {27,28}.",\n',
            '  "privateKey":"',
            vm.toString(bytes32(NODE_KEY)),
            '",\n  "signer":"',
            vm.toString(vm.addr(NODE_KEY)),
            '",\n  "domain":{"name":"veriswarm","version":"1","chainId":',
            vm.toString(CHAIN_ID),
            ',"verifyingContract":"',
            vm.toString(VERIFYING_CONTRACT),
            '"},\n'
        );
        json = string.concat(
            json,
            '  "domainTypeString":"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)",\n',
            '  "domainSeparator":"',
            vm.toString(at.domainSeparator()),
            '",\n  "receiptTypeString":"Receipt(bytes32 manifestHash,uint32 shardIndex,bytes32 sessionId,uint32 step,uint32 startPos,uint32 numTokens,bytes32 inputHash,bytes32 contextHash,bytes32 outputHash,bytes32 requestNonce,uint64 timestampMs)",\n',
            '  "receiptTypeHash":"',
            vm.toString(VeriswarmHashes.RECEIPT_TYPEHASH),
            '",\n  "receiptA":',
            _receiptJson(
                a, keccak256(abi.encode(VeriswarmHashes.RECEIPT_TYPEHASH, a)), digestA, signDigest(NODE_KEY, digestA)
            ),
            ',\n  "receiptB":',
            _receiptJson(
                b, keccak256(abi.encode(VeriswarmHashes.RECEIPT_TYPEHASH, b)), digestB, signDigest(NODE_KEY, digestB)
            ),
            ",\n"
        );
        json = string.concat(json, _verdictJson(), "}\n");
    }

    function _verdictJson() internal view returns (string memory) {
        Verdict memory v = _verdict();
        bytes32 digest = at.verdictDigest(v);
        return string.concat(
            '  "verdictTypeString":"Verdict(address node,bytes32 evidenceHash,uint16 slashBps,uint64 deadline)",\n',
            '  "verdictTypeHash":"',
            vm.toString(VeriswarmHashes.VERDICT_TYPEHASH),
            '",\n  "verdict":{"verifierPrivateKey":"',
            vm.toString(bytes32(VERIFIER_KEY)),
            '","verifier":"',
            vm.toString(vm.addr(VERIFIER_KEY)),
            '","message":{"node":"',
            vm.toString(v.node),
            '","evidenceHash":"',
            vm.toString(v.evidenceHash),
            '","slashBps":',
            vm.toString(uint256(v.slashBps)),
            ',"deadline":',
            vm.toString(uint256(v.deadline)),
            '},"digest":"',
            vm.toString(digest),
            '","signature":"',
            vm.toString(signDigest(VERIFIER_KEY, digest)),
            '"}\n'
        );
    }
}

// Azure Batch: the account, and the pool with its user-assigned identity (registry pull, Blob
// access, log upload), created here because only the management plane can attach an identity
// to a pool. The autoscale formula is the one in fleetscore/compute/batch.py
// (the same file, fleetscore/compute/autoscale.formula).
param name string
param location string
param tags object
param poolIdentityId string
// vmSize can be updated only while the pool has no node in a steady allocation state ("Update Batch
// pool properties", https://learn.microsoft.com/azure/batch/batch-pool-update-properties), so a new
// size is deployed as a new pool, under a new name (docs/operations.md).
@description('The pool id; a new VM size goes with a new pool id.')
param poolName string = 'fleetscore'
param vmSize string
param maxNodes int
param spot bool
param image string
param registryServer string
param tasksPerNode int = 2

var nodes = '$nodes'
var formula = replace(replace(replace(replace(loadTextContent('../../fleetscore/compute/autoscale.formula'), '{max_nodes}', string(maxNodes)), '{tasks_per_node}', string(tasksPerNode)), '{dedicated}', spot ? '0' : nodes), '{low_priority}', spot ? nodes : '0')

resource account 'Microsoft.Batch/batchAccounts@2024-07-01' = {
  name: name
  location: location
  tags: tags
  identity: { type: 'UserAssigned', userAssignedIdentities: { '${poolIdentityId}': {} } }
  properties: {
    poolAllocationMode: 'BatchService'
    allowedAuthenticationModes: [ 'AAD' ]   // no shared keys
    publicNetworkAccess: 'Enabled'
  }
}

resource pool 'Microsoft.Batch/batchAccounts/pools@2024-07-01' = {
  parent: account
  name: poolName
  identity: { type: 'UserAssigned', userAssignedIdentities: { '${poolIdentityId}': {} } }
  properties: {
    vmSize: vmSize
    taskSlotsPerNode: tasksPerNode
    deploymentConfiguration: {
      virtualMachineConfiguration: {
        imageReference: { publisher: 'microsoft-dsvm', offer: 'ubuntu-hpc', sku: '2204', version: 'latest' }
        nodeAgentSkuId: 'batch.node.ubuntu 22.04'
        containerConfiguration: {
          type: 'DockerCompatible'
          containerImageNames: [ image ]
          containerRegistries: [ { registryServer: registryServer, identityReference: { resourceId: poolIdentityId } } ]
        }
      }
    }
    scaleSettings: {
      autoScale: { formula: formula, evaluationInterval: 'PT5M' }
    }
  }
}

output accountName string = account.name
output accountEndpoint string = account.properties.accountEndpoint
output poolId string = pool.name
